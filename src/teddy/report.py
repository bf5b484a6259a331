"""The paper's tables: per dataset, one block per (student, label protocol), rows method
(ceiling first, then ours, then published figures under the matching protocol), columns IPC,
mean +- std over seeds, the best measured value per column marked. CSV (long form), Markdown,
LaTeX (booktabs) and HTML (for Snakemake's report)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from teddy.errors import TeddyError
from teddy.published import PUBLISHED_PROTOCOL

# the ceiling run each evaluation protocol is compared with: stored soft labels are online KD
# computed ahead of time (same mathematics), so both share the online_kd ceiling
CEILING_PROTOCOL = {"online_kd": "online_kd", "stored": "online_kd", "hard": "hard"}
CEILING_NAME = "ceiling (whole train set)"
KIND_ORDER = {"ceiling": 0, "measured": 1, "published": 2}


def label_protocols(cfg: dict) -> list[str]:
    """evaluate.labels as a list (a single protocol may be written as a string)."""
    labels = cfg["evaluate"].get("labels", "online_kd")
    return [labels] if isinstance(labels, str) else list(labels)


def ceiling_protocols(cfg: dict) -> list[str]:
    """The ceiling runs the configured evaluation protocols need (none without `ceiling:`)."""
    if not cfg.get("ceiling"):
        return []
    return sorted({CEILING_PROTOCOL[p] for p in label_protocols(cfg)})


def requested_cells(cfg: dict) -> pd.DataFrame:
    """Every (method, ipc, arch, labels, seed) the config asks evaluate for."""
    ev = cfg["evaluate"]
    index = pd.MultiIndex.from_product(
        [list(cfg["distill"]["methods"]), [int(i) for i in cfg["distill"]["ipc"]], list(ev["students"]),
         label_protocols(cfg), [int(s) for s in ev["seeds"]]], names=["method", "ipc", "arch", "labels", "seed"])
    return index.to_frame(index=False)


def requested_ceiling_cells(cfg: dict) -> pd.DataFrame:
    """Every (arch, labels, seed) ceiling run the config asks for (empty without `ceiling:`)."""
    protocols = ceiling_protocols(cfg)
    if not protocols:
        return pd.DataFrame(columns=["arch", "labels", "seed"])
    index = pd.MultiIndex.from_product(
        [list(cfg["evaluate"]["students"]), protocols, [int(s) for s in cfg["ceiling"].get("seeds", [0])]],
        names=["arch", "labels", "seed"])
    return index.to_frame(index=False)


def collect_results(json_paths, what: str = "evaluation result") -> pd.DataFrame:
    rows = []
    for p in json_paths:
        try:
            rows.append(json.loads(Path(p).read_text()))
        except FileNotFoundError:
            raise TeddyError(f"missing {what} {p}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise TeddyError(f"unreadable {what} {p}: {exc}") from None
    if not rows:
        raise TeddyError(f"no {what}s to aggregate")
    table = pd.DataFrame(rows)
    if "labels" not in table:  # results written before label protocols were recorded
        table["labels"] = "online_kd"
    return table


def check_cells(results: pd.DataFrame, requested: pd.DataFrame, what: str = "evaluation") -> None:
    """Every requested cell must have a result: a missing one is named, never left empty."""
    keys = list(requested.columns)
    absent = [k for k in keys if k not in results]
    if absent:
        raise TeddyError(f"{what} results lack the fields {absent}")
    have = set(map(tuple, results[keys].astype({k: requested[k].dtype for k in keys}).itertuples(index=False)))
    for cell in requested.itertuples(index=False):
        if tuple(cell) not in have:
            named = " ".join(f"{k}={v}" for k, v in zip(keys, cell))
            raise TeddyError(f"no {what} result for the requested cell {named}")


def _mean_std(results: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed, shown as the mean alone) of top-1 over
    seeds, in %."""
    grouped = results.groupby(keys, sort=True)["test_accuracy"]
    table = grouped.agg(mean="mean", std="std", seeds="count").reset_index()
    table["mean"] = (table["mean"] * 100).round(2)
    table["std"] = (table["std"] * 100).round(2)
    return table


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, ipc, arch, labels): mean, std, seeds."""
    return _mean_std(results, ["method", "ipc", "arch", "labels"])


def ceiling_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, labels) of the whole-training-set runs."""
    return _mean_std(results, ["arch", "labels"])


def with_distill_seconds(table: pd.DataFrame, distilled_dir) -> pd.DataFrame:
    """Add each (method, ipc)'s distillation wall time, the `seconds` of its distill log.json
    (NaN where absent), so accuracy and cost sit side by side."""
    def seconds(method, ipc):
        path = Path(distilled_dir) / str(method) / f"ipc{int(ipc)}" / "log.json"
        return round(float(json.loads(path.read_text())["seconds"]), 1) if path.is_file() else float("nan")
    return table.assign(distill_seconds=[seconds(m, i) for m, i in zip(table["method"], table["ipc"])])


def paper_table(measured: pd.DataFrame, ceilings: pd.DataFrame | None = None,
                published: pd.DataFrame | None = None, method_order=None) -> pd.DataFrame:
    """Long form of every block: student, labels, kind (ceiling|measured|published), method, ipc,
    mean, std, seeds, best, whole_train_set, norm, source, distill_seconds. Ceiling rows repeat
    their one value in every IPC column of their block; published rows are matched on student and protocol (soft: online_kd/stored,
    hard: hard), and a published whole-dataset figure (no IPC) is repeated like a ceiling. Our
    methods follow `method_order` (the config's order) when given, else alphabetical order."""
    rows = []
    for (student, labels), block in measured.groupby(["arch", "labels"], sort=True):
        ipcs = sorted(int(i) for i in block["ipc"].unique())
        if ceilings is not None and not ceilings.empty:
            match = ceilings[(ceilings["arch"] == student) & (ceilings["labels"] == CEILING_PROTOCOL[labels])]
            for c in match.itertuples(index=False):
                rows += [{"student": student, "labels": labels, "kind": "ceiling", "method": CEILING_NAME, "ipc": i,
                          "mean": c.mean, "std": c.std, "seeds": c.seeds, "whole_train_set": True,
                          "source": f"measured ({c.labels} labels)"} for i in ipcs]
        for m in block.itertuples(index=False):
            rows.append({"student": student, "labels": labels, "kind": "measured", "method": m.method,
                         "ipc": int(m.ipc), "mean": m.mean, "std": m.std, "seeds": m.seeds, "source": "measured",
                         **({"distill_seconds": m.distill_seconds} if hasattr(m, "distill_seconds") else {})})
        if published is not None and not published.empty:
            match = published[(published["student"] == student)
                              & (published["labels"] == PUBLISHED_PROTOCOL[labels])]
            for p in match.itertuples(index=False):
                for i in (ipcs if pd.isna(p.ipc) else [int(p.ipc)] if int(p.ipc) in ipcs else []):
                    rows.append({"student": student, "labels": labels, "kind": "published", "method": p.method,
                                 "ipc": i, "mean": p.top1, "std": p.std, "seeds": pd.NA, "norm": p.norm,
                                 "whole_train_set": pd.isna(p.ipc), "source": p.source})
    table = pd.DataFrame(rows)
    if table.empty:
        raise TeddyError("no measured results to tabulate")
    for column in ("norm", "distill_seconds", "whole_train_set"):
        if column not in table:
            table[column] = pd.NA
    table["whole_train_set"] = table["whole_train_set"].fillna(False).astype(bool)
    is_measured = table["kind"] == "measured"
    column_best = table[is_measured].groupby(["student", "labels", "ipc"])["mean"].transform("max")
    table["best"] = False
    table.loc[is_measured, "best"] = table.loc[is_measured, "mean"] == column_best
    table["order"] = table["kind"].map(KIND_ORDER)
    rank = {m: i for i, m in enumerate(method_order or [])}
    table["method_rank"] = [rank.get(m, len(rank)) if k == "measured" else 0
                            for k, m in zip(table["kind"], table["method"])]
    table = table.sort_values(["student", "labels", "order", "method_rank", "method", "ipc"], kind="stable")
    return table.drop(columns=["order", "method_rank"]).reset_index(drop=True)[
        ["student", "labels", "kind", "method", "ipc", "mean", "std", "seeds", "best", "whole_train_set", "norm",
         "source", "distill_seconds"]]


def _row_label(kind: str, method: str, norm) -> str:
    if kind == "published":
        return f"{method} (published, {norm} norm)" if isinstance(norm, str) else f"{method} (published)"
    return method


def _cell(mean, std, pm: str) -> str:
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f}{pm}{std:.2f}"


def blocks(table: pd.DataFrame, pm: str = " ± ", bold=lambda s: f"**{s}**", missing: str = "–"):
    """[(student, labels, grid)]: grid is a DataFrame, rows method (in table order), columns
    'IPC <n>', cells 'mean ± std' with the best measured value wrapped by `bold`."""
    out = []
    for (student, labels), block in table.groupby(["student", "labels"], sort=True):
        ipcs = sorted(block["ipc"].unique())
        order, cells = [], {}
        for r in block.itertuples(index=False):
            name = _row_label(r.kind, r.method, r.norm)
            if name not in cells:
                order.append(name)
                cells[name] = {}
            text = _cell(r.mean, r.std, pm)
            cells[name][f"IPC {r.ipc}"] = bold(text) if r.best else text
        grid = pd.DataFrame([{"method": n, **{f"IPC {i}": cells[n].get(f"IPC {i}", missing) for i in ipcs}}
                             for n in order])
        out.append((student, labels, grid))
    return out


def _seeds_note(table: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in table.loc[table["kind"] == "measured", "seeds"]})
    return "/".join(map(str, seeds))


def render_markdown(dataset: str, table: pd.DataFrame, efficiency: pd.DataFrame | None = None) -> str:
    out = [f"# Results: {dataset}", "",
           f"Top-1 accuracy (%) on the real test set of students trained on the distilled sets, mean ± std "
           f"over {_seeds_note(table)} seeds. **Bold**: the best measured value of its column. The ceiling row "
           "trains the student on the whole real training set. Published rows come from the literature under "
           "the same label protocol (soft labels for online_kd/stored, hard for hard), are never part of our "
           "means, and name their student's normalisation where it differs from ours; sources below.", ""]
    for student, labels, grid in blocks(table):
        out += [f"## {student}, {labels} labels", "", grid.to_markdown(index=False), ""]
    published = table[table["kind"] == "published"].drop_duplicates(["method", "source"])
    if not published.empty:
        out += ["## Published sources", ""]
        out += [f"- {r.method}: {r.source}" for r in published.itertuples(index=False)] + [""]
    if efficiency is not None and not efficiency.empty:
        out += ["## Efficiency (Snakemake benchmark files; peak GPU memory as logged by each job)", "",
                efficiency.astype(object).where(efficiency.notna(), "").to_markdown(index=False), ""]
    return "\n".join(out)


def latex_escape(text: str) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(table.get(ch, ch) for ch in str(text))


def render_latex(dataset: str, table: pd.DataFrame) -> str:
    """One booktabs tabular: a \\multicolumn heading per (student, labels) block."""
    grids = blocks(table, pm=r" $\pm$ ", bold=lambda s: rf"\textbf{{{s}}}", missing="--")
    ipcs = sorted(table["ipc"].unique())
    columns = [f"IPC {i}" for i in ipcs]
    width = 1 + len(columns)
    lines = [r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(dataset)}: top-1 (\%) on the real test set, mean $\pm$ std over "
             rf"{_seeds_note(table)} seeds; best measured value per column in bold.}}",
             rf"\begin{{tabular}}{{l{'c' * len(columns)}}}", r"\toprule",
             " & ".join(["Method"] + columns) + r" \\"]
    for student, labels, grid in grids:
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(student)}, "
                               rf"{latex_escape(labels)} labels}}}} \\", r"\midrule"]
        for row in grid.to_dict("records"):
            # cells carry our own LaTeX (\textbf, $\pm$); only names are escaped
            lines.append(" & ".join([latex_escape(row["method"])] + [row.get(c, "--") for c in columns]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def render_html(dataset: str, table: pd.DataFrame, efficiency: pd.DataFrame | None = None) -> str:
    """A self-contained page of the blocks (Snakemake's report shows HTML files inline)."""
    parts = [f"<h1>Results: {html.escape(dataset)}</h1>",
             f"<p>Top-1 (%) on the real test set, mean ± std over {_seeds_note(table)} seeds; "
             "<b>bold</b>: best measured value per column; published rows under the matching label protocol, "
             "never part of our means.</p>"]
    for student, labels, grid in blocks(table, bold=lambda s: f"<b>{html.escape(s)}</b>"):
        escaped = grid.map(lambda v: v if v.startswith("<b>") else html.escape(v))
        parts += [f"<h2>{html.escape(student)}, {html.escape(labels)} labels</h2>",
                  escaped.to_html(index=False, escape=False, border=0)]
    if efficiency is not None and not efficiency.empty:
        parts += ["<h2>Efficiency</h2>", efficiency.to_html(index=False, border=0, na_rep="")]
    return "<!DOCTYPE html>\n<html><head><meta charset='utf-8'></head><body>\n" + "\n".join(parts) + \
        "\n</body></html>\n"
