"""The paper-table builder on synthetic result files: means and stds over seeds, best marking,
ceiling rows, published rows matched on label protocol, missing cells named, and the Markdown,
LaTeX and HTML renderings."""

import json
import re

import pandas as pd
import pytest

from teddy.errors import TeddyError
from teddy.published import COLUMNS
from teddy.report import (accuracy_table, blocks, ceiling_table, check_cells, collect_results, paper_table,
                          render_html, render_latex, render_markdown, requested_cells)

CFG = {"distill": {"ipc": [1, 10], "methods": {"teddy": {}, "random": {}}},
       "evaluate": {"students": ["convnet"], "seeds": [0, 1], "labels": ["online_kd", "hard"]},
       "ceiling": {"seeds": [0, 1], "recipe": {}}}
# (method, ipc, labels) -> accuracies of seeds 0 and 1
ACC = {("teddy", 1, "online_kd"): (0.50, 0.54), ("random", 1, "online_kd"): (0.48, 0.50),
       ("teddy", 10, "online_kd"): (0.80, 0.82), ("random", 10, "online_kd"): (0.83, 0.83),
       ("teddy", 1, "hard"): (0.40, 0.44), ("random", 1, "hard"): (0.41, 0.41),
       ("teddy", 10, "hard"): (0.70, 0.72), ("random", 10, "hard"): (0.60, 0.66)}


def write_results(root, skip=()):
    paths = []
    for (method, ipc, labels), accs in ACC.items():
        for seed, acc in enumerate(accs):
            if (method, ipc, labels, seed) in skip:
                continue
            p = root / "eval" / method / f"ipc{ipc}" / "convnet" / labels / f"seed{seed}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"method": method, "ipc": ipc, "arch": "convnet", "seed": seed, "labels": labels,
                                     "test_accuracy": acc, "train_seconds": 1.0}))
            paths.append(p)
    return paths


def ceilings():
    rows = [{"arch": "convnet", "labels": labels, "seed": s, "test_accuracy": acc}
            for labels, accs in (("online_kd", (0.88, 0.90)), ("hard", (0.91, 0.91))) for s, acc in enumerate(accs)]
    return ceiling_table(pd.DataFrame(rows))


def published():
    rows = [("fashion_mnist", "dc", 10, "convnet", "hard", "instance", 82.3, float("nan"), "DC"),
            ("fashion_mnist", "dc", 50, "convnet", "hard", "instance", 83.6, float("nan"), "DC"),  # no IPC 50 here
            ("fashion_mnist", "sre2l", 1, "convnet", "soft", "batch", 40.0, 1.5, "paper X"),
            ("fashion_mnist", "whole", pd.NA, "convnet", "hard", "instance", 93.0, float("nan"), "paper Y"),
            ("fashion_mnist", "dc", 10, "resnet18", "hard", "batch", 11.0, float("nan"), "other student")]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["ipc"] = table["ipc"].astype("Int64")
    return table


def build(tmp_path):
    results = collect_results(write_results(tmp_path))
    return paper_table(accuracy_table(results), ceilings(), published())


def cell(table, labels, kind, method, ipc):
    row = table[(table["labels"] == labels) & (table["kind"] == kind) & (table["method"] == method)
                & (table["ipc"] == ipc)]
    assert len(row) == 1, row
    return row.iloc[0]


def test_means_and_sample_stds_over_seeds(tmp_path):
    table = build(tmp_path)
    teddy = cell(table, "online_kd", "measured", "teddy", 1)
    assert teddy["mean"] == pytest.approx(52.0) and teddy["std"] == pytest.approx(2.83, abs=0.01)
    assert teddy["seeds"] == 2
    assert cell(table, "online_kd", "measured", "random", 10)["std"] == 0.0  # two equal seeds


def test_our_methods_follow_the_given_order(tmp_path):
    measured = accuracy_table(collect_results(write_results(tmp_path)))
    methods = lambda t: list(dict.fromkeys(t.loc[t["kind"] == "measured", "method"]))
    assert methods(paper_table(measured)) == ["random", "teddy"]
    assert methods(paper_table(measured, method_order=["teddy", "random"])) == ["teddy", "random"]


def test_one_seed_has_no_spread_and_shows_the_mean_alone(tmp_path):
    results = collect_results(write_results(tmp_path))
    one = accuracy_table(results[results["seed"] == 0])
    assert one["std"].isna().all() and (one["seeds"] == 1).all()
    md = render_markdown("fashion_mnist", paper_table(one))
    assert "| **50.00** " in md and "±" not in md.split("## convnet, online_kd")[1]


def test_best_measured_value_per_column_is_marked(tmp_path):
    table = build(tmp_path)
    best = table[table["best"]]
    got = {(r.labels, r.ipc, r.method) for r in best.itertuples()}
    assert got == {("online_kd", 1, "teddy"), ("online_kd", 10, "random"), ("hard", 1, "teddy"),
                   ("hard", 10, "teddy")}
    assert not table.loc[table["kind"] != "measured", "best"].any()  # ceiling/published never "best"


def test_ceiling_rows_come_first_and_match_the_protocol(tmp_path):
    table = build(tmp_path)
    for labels, expected in (("online_kd", 89.0), ("hard", 91.0)):
        block = table[table["labels"] == labels]
        assert block.iloc[0]["kind"] == "ceiling"
        ceiling = block[block["kind"] == "ceiling"]
        assert set(ceiling["ipc"]) == {1, 10} and (ceiling["mean"] == expected).all()
    grid = {(s, l): g for s, l, g in blocks(table)}[("convnet", "hard")]
    assert grid.iloc[0]["method"].startswith("ceiling")


def test_published_rows_are_matched_on_protocol_student_and_ipc(tmp_path):
    table = build(tmp_path)
    pub = table[table["kind"] == "published"]
    hard = pub[pub["labels"] == "hard"]
    assert set(zip(hard["method"], hard["ipc"])) == {("dc", 10), ("whole", 1), ("whole", 10)}
    assert hard["whole_train_set"].sum() == 2 and (hard["student"] == "convnet").all()
    soft = pub[pub["labels"] == "online_kd"]  # soft published rows sit under our soft-label protocols
    assert list(zip(soft["method"], soft["ipc"])) == [("sre2l", 1)]
    # never mixed into our means: the measured cells are what the seeds give
    assert cell(table, "hard", "measured", "random", 10)["mean"] == pytest.approx(63.0)


def test_stored_labels_share_the_online_kd_ceiling_and_soft_published_rows(tmp_path):
    measured = accuracy_table(collect_results(write_results(tmp_path)).replace({"online_kd": "stored"}))
    table = paper_table(measured, ceilings(), published())
    assert cell(table, "stored", "ceiling", "ceiling (whole train set)", 1)["mean"] == pytest.approx(89.0)
    assert cell(table, "stored", "published", "sre2l", 1)["mean"] == 40.0


def test_a_missing_result_file_names_the_cell(tmp_path):
    paths = write_results(tmp_path, skip={("random", 10, "hard", 1)})
    results = collect_results(paths)
    with pytest.raises(TeddyError, match="method=random ipc=10 arch=convnet labels=hard seed=1"):
        check_cells(results, requested_cells(CFG))
    check_cells(collect_results(write_results(tmp_path)), requested_cells(CFG))  # complete: passes
    with pytest.raises(TeddyError, match="missing evaluation result .*seed9.json"):
        collect_results(paths + [tmp_path / "eval" / "seed9.json"])


def test_collect_results_rejects_corrupt_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(TeddyError, match="unreadable evaluation result"):
        collect_results([bad])


def test_markdown_has_one_block_per_student_and_protocol_with_bold_best(tmp_path):
    md = render_markdown("fashion_mnist", build(tmp_path))
    assert "## convnet, online_kd labels" in md and "## convnet, hard labels" in md
    assert "**52.00 ± 2.83**" in md and "**83.00 ± 0.00**" in md
    assert "dc (published, instance norm)" in md and "- dc: DC" in md


def _balanced(text: str) -> bool:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "{}" and i and text[i - 1] == "\\":  # \{ and \} are literal braces
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_is_booktabs_with_balanced_braces_and_equal_row_lengths(tmp_path):
    table = build(tmp_path)
    tex = render_latex("fashion_mnist", table)
    assert _balanced(tex)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    n_columns = 1 + table["ipc"].nunique()
    rows = [line for line in tex.splitlines() if line.rstrip().endswith(r"\\")]
    assert len(rows) == 1 + 2 + sum(len(g) for _, _, g in blocks(table))  # header, 2 block titles, body
    for line in rows:
        span = re.match(r"\\multicolumn\{(\d+)\}", line)
        cells = int(span.group(1)) if span else len(re.findall(r"(?<!\\)&", line)) + 1
        assert cells == n_columns, line
    assert r"\textbf{52.00 $\pm$ 2.83}" in tex and r"online\_kd" in tex


def test_html_holds_every_block(tmp_path):
    page = render_html("fashion_mnist", build(tmp_path))
    assert page.count("<table") == 2 and "<b>52.00 ± 2.83</b>" in page


def test_aggregate_stage_writes_every_output_and_names_a_missing_ceiling(tmp_path):
    from teddy.report import label_protocols
    from teddy.stages import Files, run_stage
    from test_efficiency import write_job

    cfg = {**CFG, "dataset": {"name": "fashion_mnist"}, "results_dir": str(tmp_path)}
    evals = write_results(tmp_path)
    ceiling_jsons = []
    for labels in ("hard", "online_kd"):
        for seed in (0, 1):
            p = tmp_path / "ceiling" / "convnet" / labels / f"seed{seed}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"arch": "convnet", "labels": labels, "seed": seed, "test_accuracy": 0.9}))
            ceiling_jsons.append(p)
    published = tmp_path / "published"
    published.mkdir()
    (published / "a.csv").write_text(",".join(COLUMNS) + "\nfashion_mnist,dc,10,convnet,hard,instance,82.3,,DC\n")
    benchmarks = [write_job(tmp_path, "distill", "teddy/ipc1", 3.0, 100.0, 2.5)]
    out = {name: tmp_path / "tables" / name for name in
           ("accuracy.csv", "accuracy.md", "accuracy.tex", "accuracy.html", "efficiency.csv")}
    plots = {labels: tmp_path / "plots" / f"{labels}.png" for labels in ("online_kd", "hard")}
    assert benchmarks[0].is_relative_to(tmp_path / "benchmarks")  # read from results_dir/benchmarks
    outputs = Files(csv=out["accuracy.csv"], md=out["accuracy.md"], tex=out["accuracy.tex"],
                    html=out["accuracy.html"], efficiency=out["efficiency.csv"],
                    plots=[plots[labels] for labels in label_protocols(cfg)])
    aggregate = lambda ceilings: run_stage("aggregate", cfg, {}, Files(  # noqa: E731
        evals=evals, ceilings=ceilings, published=sorted(published.glob("*.csv"))), outputs)
    table = aggregate(ceiling_jsons)
    assert all(p.is_file() for p in [*out.values(), *plots.values()])
    assert set(table["kind"]) == {"ceiling", "measured", "published"}
    assert "dc (published, instance norm)" in out["accuracy.md"].read_text()
    with pytest.raises(TeddyError, match="no ceiling result for the requested cell arch=convnet labels=hard seed=1"):
        aggregate(ceiling_jsons[:1] + ceiling_jsons[2:])
