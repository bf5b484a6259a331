"""The paper-table builder on synthetic result files: means and stds over seeds, best marking,
ceiling rows, published rows matched on (student, evaluation protocol) and never mixed across
protocols, the unmatched published rows listed apart with the closest protocol we run, missing
cells named, and the Markdown, LaTeX and HTML renderings."""

import json
import re

import pandas as pd
import pytest

from teddy.errors import TeddyError
from teddy.published import COLUMNS
from teddy.report import (UNMATCHED_TITLE, accuracy_table, blocks, ceiling_table, cell_pairs, check_cells,
                          closest_protocol, collect_results, mean_std_text, method_gaps, paper_table, render_html,
                          render_latex, render_markdown, requested_ceiling_cells, requested_cells, run_protocols)

KD, HARD = "teddy_small_kd", "dc"
CFG = {"distill": {"ipc": [1, 10], "methods": {"teddy": {}, "random": {}}},
       "evaluate": {"students": ["convnet"], "seeds": [0, 1], "cells": [["convnet", KD], ["convnet", HARD]]},
       "ceiling": {"seeds": [0, 1]}}
# (method, ipc, protocol) -> accuracies of seeds 0 and 1
ACC = {("teddy", 1, KD): (0.50, 0.54), ("random", 1, KD): (0.48, 0.50),
       ("teddy", 10, KD): (0.80, 0.82), ("random", 10, KD): (0.83, 0.83),
       ("teddy", 1, HARD): (0.40, 0.44), ("random", 1, HARD): (0.41, 0.41),
       ("teddy", 10, HARD): (0.70, 0.72), ("random", 10, HARD): (0.60, 0.66)}


def write_results(root, skip=()):
    paths = []
    for (method, ipc, protocol), accs in ACC.items():
        for seed, acc in enumerate(accs):
            if (method, ipc, protocol, seed) in skip:
                continue
            p = root / "eval" / method / f"ipc{ipc}" / "convnet" / protocol / f"seed{seed}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"method": method, "ipc": ipc, "arch": "convnet", "seed": seed,
                                     "protocol": protocol, "test_accuracy": acc, "train_seconds": 1.0}))
            paths.append(p)
    return paths


def ceilings():
    rows = [{"arch": "convnet", "protocol": protocol, "seed": s, "test_accuracy": acc}
            for protocol, accs in ((KD, (0.88, 0.90)), (HARD, (0.91, 0.91))) for s, acc in enumerate(accs)]
    return ceiling_table(pd.DataFrame(rows))


NAN = float("nan")


def published():
    rows = [("fashion_mnist", "dc", 10, "convnet", "hard", "dc", "instance", 82.3, NAN, "DC"),
            ("fashion_mnist", "dc", 50, "convnet", "hard", "dc", "instance", 83.6, NAN, "DC"),  # no IPC 50 here
            ("fashion_mnist", "sre2l", 1, "convnet", "soft", KD, "batch", 40.0, 1.5, "paper X"),
            ("fashion_mnist", "whole", pd.NA, "convnet", "hard", "dc", "instance", 93.0, NAN, "paper Y"),
            ("fashion_mnist", "dc", 10, "resnet18", "hard", "dc", "batch", 11.0, NAN, "other student"),
            ("fashion_mnist", "dsa", 10, "convnet", "hard", "dsa", "instance", 84.6, 0.3, "DSA"),
            ("fashion_mnist", "teddy", pd.NA, "convnet", "soft", "unstated", "batch", 90.0, NAN, "paper Z")]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["ipc"] = table["ipc"].astype("Int64")
    return table


def build(tmp_path):
    results = collect_results(write_results(tmp_path))
    return paper_table(accuracy_table(results), ceilings(), published(), kd_protocols=[KD])


def cell(table, protocol, kind, method, ipc):
    row = table[(table["protocol"] == protocol) & (table["kind"] == kind) & (table["method"] == method)
                & (table["ipc"] == ipc)]
    assert len(row) == 1, row
    return row.iloc[0]


def test_means_and_sample_stds_over_seeds(tmp_path):
    table = build(tmp_path)
    teddy = cell(table, KD, "measured", "teddy", 1)
    assert teddy["mean"] == pytest.approx(52.0) and teddy["std"] == pytest.approx(2.83, abs=0.01)
    assert teddy["seeds"] == 2
    assert cell(table, KD, "measured", "random", 10)["std"] == 0.0  # two equal seeds
    assert "protocol" in table and "labels" not in table  # the long-form CSV's column


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
    assert "| **50.00** " in md and "±" not in md.split(f"## convnet, protocol {KD}")[1]


def test_best_measured_value_per_column_is_marked(tmp_path):
    table = build(tmp_path)
    best = table[table["best"]]
    got = {(r.protocol, r.ipc, r.method) for r in best.itertuples()}
    assert got == {(KD, 1, "teddy"), (KD, 10, "random"), (HARD, 1, "teddy"), (HARD, 10, "teddy")}
    assert not table.loc[table["kind"] != "measured", "best"].any()  # ceiling/published never "best"


def test_ceiling_rows_come_first_and_match_the_protocol(tmp_path):
    table = build(tmp_path)
    for protocol, expected in ((KD, 89.0), (HARD, 91.0)):
        block = table[(table["protocol"] == protocol) & (table["kind"] != "unmatched")]
        assert block.iloc[0]["kind"] == "ceiling"
        ceiling = block[block["kind"] == "ceiling"]
        assert set(ceiling["ipc"]) == {1, 10} and (ceiling["mean"] == expected).all()
    grid = {(s, p): g for s, p, g in blocks(table)}[("convnet", HARD)]
    assert grid.iloc[0]["method"].startswith("ceiling")


def test_a_ceiling_of_one_protocol_never_serves_another(tmp_path):
    measured = accuracy_table(collect_results(write_results(tmp_path)))
    only_dc = ceilings()
    table = paper_table(measured, only_dc[only_dc["protocol"] == HARD])
    ceiling = table[table["kind"] == "ceiling"]
    assert set(ceiling["protocol"]) == {HARD}


def test_published_rows_are_matched_on_protocol_student_and_ipc(tmp_path):
    table = build(tmp_path)
    pub = table[table["kind"] == "published"]
    dc = pub[pub["protocol"] == HARD]
    assert set(zip(dc["method"], dc["ipc"])) == {("dc", 10), ("whole", 1), ("whole", 10)}
    assert dc["whole_train_set"].sum() == 2 and (dc["student"] == "convnet").all()
    kd = pub[pub["protocol"] == KD]
    assert list(zip(kd["method"], kd["ipc"])) == [("sre2l", 1)]
    # never mixed into our means: the measured cells are what the seeds give
    assert cell(table, HARD, "measured", "random", 10)["mean"] == pytest.approx(63.0)


def test_a_published_row_of_another_protocol_never_sits_in_a_block(tmp_path):
    table = build(tmp_path)
    in_blocks = table[table["kind"] != "unmatched"]
    assert "dsa" not in set(in_blocks["method"]) and "dsa" not in set(in_blocks["protocol"])
    assert all("dsa" not in set(grid["method"].str.split(" ").str[0]) for _, _, grid in blocks(table))
    unmatched = table[table["kind"] == "unmatched"].set_index("method")
    # dsa: not run -> closest dc; the resnet18 dc row: no resnet18 block -> its own protocol;
    # unstated (the Teddy paper's own rows) -> the first KD protocol we run
    assert set(unmatched.index) == {"dsa", "dc", "teddy"}
    assert unmatched.loc["dsa", "protocol"] == "dsa" and unmatched.loc["dsa", "closest_protocol"] == "dc"
    assert unmatched.loc["dc", "student"] == "resnet18" and unmatched.loc["dc", "closest_protocol"] == "dc"
    assert unmatched.loc["teddy", "closest_protocol"] == KD and pd.isna(unmatched.loc["teddy", "ipc"])
    # a row matching a block but at an IPC we did not run is not "unmatched": simply no column for it
    assert not ((table["method"] == "dc") & (table["ipc"] == 50)).any()
    assert (table["kind"] == "unmatched").iloc[-3:].all()  # listed after every block


@pytest.mark.parametrize("published_protocol, soft, run, expected", [
    ("dc", False, ["dc", KD], "dc"),
    ("dsa", False, [KD, "dc"], "dc"),
    ("dc_mnist", False, [KD, "dc"], "dc"),
    ("mtt", False, ["dc", "dsa"], "dsa"),
    ("mtt", False, [KD, "dc"], "dc"),
    ("sre2l_imagenet1k", True, ["dc", KD], KD),
    ("gvbsm", True, ["dc", "rded", KD], "rded"),
    ("unstated", True, ["dc", KD], KD),
    ("edc", True, ["dc"], "dc"),  # no KD protocol run: the first we run
    ("dsa", False, [KD], KD),
    ("dsa", False, [], None),
])
def test_closest_protocol(published_protocol, soft, run, expected):
    kd = [p for p in run if p in (KD, "rded")]  # the KD protocols among those we run (their files say so)
    assert closest_protocol(published_protocol, run, kd, soft=soft) == expected


def test_requested_cells_are_the_configured_pairs_times_methods_ipc_and_seeds():
    cells = requested_cells(CFG)
    assert list(cells.columns) == ["method", "ipc", "arch", "protocol", "seed"]
    assert len(cells) == 2 * 2 * 2 * 2 and set(cells["protocol"]) == {KD, HARD}
    ceiling = requested_ceiling_cells(CFG)
    assert list(ceiling.columns) == ["arch", "protocol", "seed"] and len(ceiling) == 4
    assert requested_ceiling_cells({**CFG, "ceiling": None}).empty
    assert run_protocols(CFG) == [KD, HARD] and cell_pairs(CFG) == [("convnet", KD), ("convnet", HARD)]
    with pytest.raises(TeddyError, match="not an \\[arch, protocol\\] pair"):
        cell_pairs({"evaluate": {"cells": [["convnet"]]}})
    with pytest.raises(TeddyError, match="evaluate.cells"):
        requested_cells({**CFG, "evaluate": {"seeds": [0]}})


def test_a_missing_result_file_names_the_cell(tmp_path):
    paths = write_results(tmp_path, skip={("random", 10, HARD, 1)})
    results = collect_results(paths)
    with pytest.raises(TeddyError, match="method=random ipc=10 arch=convnet protocol=dc seed=1"):
        check_cells(results, requested_cells(CFG))
    check_cells(collect_results(write_results(tmp_path)), requested_cells(CFG))  # complete: passes
    with pytest.raises(TeddyError, match="missing evaluation result .*seed9.json"):
        collect_results(paths + [tmp_path / "eval" / "seed9.json"])


def test_results_without_a_protocol_field_are_refused(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"method": "teddy", "ipc": 1, "arch": "convnet", "seed": 0, "labels": "hard",
                               "test_accuracy": 0.5}))
    with pytest.raises(TeddyError, match=r"lack the fields \['protocol'\]"):
        check_cells(collect_results([old]), requested_cells(CFG))


def test_collect_results_rejects_corrupt_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(TeddyError, match="unreadable evaluation result"):
        collect_results([bad])


CONTEXT = {"protocols": {HARD: "DC benchmark, no augmentation", KD: "the demo's online-KD recipe"},
           "teacher_accuracy": 0.912, "pools": {"weak": {"convnet_e1": 0.801, "convnet_e2": 0.8554}}}


def test_markdown_has_one_block_per_student_and_protocol_with_bold_best(tmp_path):
    md = render_markdown("fashion_mnist", build(tmp_path))
    assert f"## convnet, protocol {KD}" in md and f"## convnet, protocol {HARD}" in md
    assert "**52.00 ± 2.83**" in md and "**83.00 ± 0.00**" in md
    assert "dc (published, instance norm)" in md and "- dc: DC" in md
    assert "Teacher (base model)" not in md  # no context, no teacher line


def test_markdown_lists_unmatched_published_rows_apart_with_the_closest_protocol(tmp_path):
    md = render_markdown("fashion_mnist", build(tmp_path))
    blocks_part, unmatched_part = md.split(f"## {UNMATCHED_TITLE}")
    assert "dsa" not in blocks_part and "84.60" not in blocks_part
    assert "- dsa (convnet, IPC 10): 84.60 ± 0.30; protocol dsa; closest protocol we run: dc. Source: DSA" \
        in unmatched_part
    assert "teddy (convnet, whole training set): 90.00; protocol unstated; " \
           f"closest protocol we run: {KD}" in unmatched_part
    assert "dc (resnet18, IPC 10): 11.00; protocol dc; closest protocol we run: dc" in unmatched_part


def test_context_prints_the_teacher_the_pools_and_each_protocol_description(tmp_path):
    md = render_markdown("fashion_mnist", build(tmp_path), context=CONTEXT)
    title, rest = md.split(f"## convnet, protocol {HARD}", 1)
    assert "Teacher (base model): 91.2% test" in title
    assert "Pool weak (members' test accuracy): convnet_e1 80.1%, convnet_e2 85.5%" in title
    assert rest.lstrip().startswith("DC benchmark, no augmentation")
    assert md.split(f"## convnet, protocol {KD}")[1].lstrip().startswith("the demo's online-KD recipe")
    page = render_html("fashion_mnist", build(tmp_path), context=CONTEXT)
    assert "Teacher (base model): 91.2% test" in page and "<p>DC benchmark, no augmentation</p>" in page
    assert r"Teacher (base model): 91.2\% test" in render_latex("fashion_mnist", build(tmp_path), CONTEXT)


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
    main, unmatched = tex.split(r"\end{table}")[:2]
    n_columns = 1 + table.loc[table["kind"] != "unmatched", "ipc"].nunique()
    rows = [line for line in main.splitlines() if line.rstrip().endswith(r"\\")]
    assert len(rows) == 1 + 2 + sum(len(g) for _, _, g in blocks(table))  # header, 2 block titles, body
    for line in rows:
        span = re.match(r"\\multicolumn\{(\d+)\}", line)
        cells = int(span.group(1)) if span else len(re.findall(r"(?<!\\)&", line)) + 1
        assert cells == n_columns, line
    assert r"\textbf{52.00 $\pm$ 2.83}" in tex and r"protocol teddy\_small\_kd" in tex
    assert "dsa" not in main
    assert UNMATCHED_TITLE in unmatched
    body = [line for line in unmatched.splitlines() if line.rstrip().endswith(r"\\")]
    assert len(body) == 1 + 3 and all(len(re.findall(r"(?<!\\)&", line)) == 5 for line in body)
    assert r"dsa & convnet & 10 & 84.60 $\pm$ 0.30 & dsa & dc \\" in unmatched


def test_html_holds_every_block_and_the_unmatched_section(tmp_path):
    page = render_html("fashion_mnist", build(tmp_path))
    assert page.count("<table") == 2 and "<b>52.00 ± 2.83</b>" in page
    blocks_part, unmatched_part = page.split(f"<h2>{UNMATCHED_TITLE}</h2>")
    assert "dsa" not in blocks_part and "closest protocol we run: dc" in unmatched_part


def test_aggregate_stage_writes_every_output_and_names_a_missing_ceiling(tmp_path):
    """The aggregate stage end to end: its cells come from evaluate.protocols and the students."""
    from test_efficiency import write_job

    from teddy.job_files import Files
    from teddy.stages import run_stage

    cfg = {**CFG, "dataset": {"name": "fashion_mnist"}, "results_dir": str(tmp_path),
           "evaluate": {"students": ["convnet"], "seeds": [0, 1], "protocols": [KD, HARD]}}
    evals = write_results(tmp_path)
    ceiling_jsons = []
    for protocol in (HARD, KD):
        for seed in (0, 1):
            p = tmp_path / "ceiling" / "convnet" / protocol / f"seed{seed}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"arch": "convnet", "protocol": protocol, "seed": seed, "test_accuracy": 0.9}))
            ceiling_jsons.append(p)
    published = tmp_path / "published"
    published.mkdir()
    (published / "a.csv").write_text(",".join(COLUMNS) + "\nfashion_mnist,dc,10,convnet,hard,dc,instance,82.3,,DC\n"
                                     "fashion_mnist,dsa,10,convnet,hard,dsa,instance,84.6,,DSA\n")
    benchmarks = [write_job(tmp_path, "distill", "teddy/ipc1", 3.0, 100.0, 2.5)]
    out = {name: tmp_path / "tables" / name for name in
           ("accuracy.csv", "accuracy.md", "accuracy.tex", "accuracy.html", "efficiency.csv")}
    plots = {protocol: tmp_path / "plots" / f"{protocol}.png" for protocol in run_protocols(CFG)}
    assert benchmarks[0].is_relative_to(tmp_path / "benchmarks")  # read from results_dir/benchmarks
    outputs = Files(csv=out["accuracy.csv"], md=out["accuracy.md"], tex=out["accuracy.tex"],
                    html=out["accuracy.html"], efficiency=out["efficiency.csv"],
                    plots=[plots[protocol] for protocol in run_protocols(CFG)])
    aggregate = lambda ceilings: run_stage("aggregate", cfg, {}, Files(  # noqa: E731
        evals=evals, ceilings=ceilings, published=sorted(published.glob("*.csv"))), outputs)
    table = aggregate(ceiling_jsons)
    assert all(p.is_file() for p in [*out.values(), *plots.values()])
    assert set(table["kind"]) == {"ceiling", "measured", "published", "unmatched"}
    md = out["accuracy.md"].read_text()
    assert "dc (published, instance norm)" in md and "protocol dsa; closest protocol we run: dc" in md
    with pytest.raises(TeddyError, match="no ceiling result for the requested cell arch=convnet protocol=dc seed=1"):
        aggregate(ceiling_jsons[:1] + ceiling_jsons[2:])


def test_method_gaps_give_the_difference_in_points_and_in_combined_standard_deviations():
    results = pd.DataFrame(
        [{"method": m, "ipc": 1, "arch": "convnet", "protocol": "dc", "seed": s, "test_accuracy": a}
         for m, accs in {"teddy": (0.60, 0.62, 0.64), "random": (0.50, 0.53, 0.56),
                         "herding": (0.70, 0.70, 0.70)}.items() for s, a in enumerate(accs)]
        + [{"method": "teddy", "ipc": 10, "arch": "convnet", "protocol": "dc", "seed": 0, "test_accuracy": 0.8}])
    gaps = method_gaps(accuracy_table(results), "teddy", ["random", "herding"])
    # IPC 10 has no baseline: only the IPC-1 cell is compared
    assert list(gaps["baseline"]) == ["herding", "random"] and set(gaps["ipc"]) == {1}
    by = gaps.set_index("baseline")
    assert by.loc["random", "diff"] == pytest.approx(9.0)
    assert by.loc["random", "sigmas"] == pytest.approx(9.0 / (2.0 ** 2 + 3.0 ** 2) ** 0.5, abs=0.01)
    assert by.loc["herding", "diff"] == pytest.approx(-8.0)
    assert by.loc["herding", "sigmas"] == pytest.approx(-8.0 / 2.0, abs=0.01)  # herding's networks agree


def test_mean_std_text_drops_a_missing_std():
    assert mean_std_text(51.4, 3.8) == "51.40 ± 3.80"
    assert mean_std_text(83.523, float("nan")) == "83.52"
    assert mean_std_text(83.5, None, r" $\pm$ ") == "83.50"
    assert mean_std_text(70.5, 0.6, r" $\pm$ ") == r"70.50 $\pm$ 0.60"
