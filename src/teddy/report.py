"""The paper's tables: per dataset, one block per (student, evaluation protocol), rows method
(ceiling first, then ours, then published figures measured under the same protocol on the same
student), columns IPC, mean +- std over seeds, the best measured value per column marked. Published
figures of the dataset that no block matches are listed apart ("Published under protocols we did not
run"), each with the closest protocol we run. CSV (long form), Markdown, LaTeX (booktabs) and HTML
(for Snakemake's report)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from teddy.errors import TeddyError
from teddy.jobs import method_eval_seeds, method_ipcs
from teddy.protocols import closest_protocols

CEILING_NAME = "ceiling (whole train set)"
KIND_ORDER = {"ceiling": 0, "measured": 1, "published": 2, "unmatched": 3}
UNMATCHED_TITLE = "Published under protocols we did not run"

def closest_protocol(published_protocol: str, run_protocols, kd_protocols=(), soft: bool = False,
                     closest: dict | None = None) -> str | None:
    """The protocol we run that a published figure of `published_protocol` is best read against:
    itself when we run it; else the first of its protocol file's `closest` list we run (`closest`:
    name -> list, default teddy.protocols.closest_protocols() of the repository's protocols); else, for a figure
    of soft-label students (`soft`) or an `unstated` protocol, the first of the KD protocols we run
    (`kd_protocols`); else the first protocol we run (None when we run none). A pointer for the
    reader, never a licence to compare the numbers."""
    run = list(dict.fromkeys(run_protocols))
    if not run:
        return None
    if published_protocol in run:
        return published_protocol
    closest = closest_protocols() if closest is None else closest
    for candidate in closest.get(published_protocol, ()):
        if candidate in run:
            return candidate
    if soft or published_protocol == "unstated":
        for candidate in run:
            if candidate in kd_protocols:
                return candidate
    return run[0]


def cell_pairs(cfg: dict) -> list[tuple[str, str]]:
    """evaluate.cells: the [arch, protocol] pairs evaluated (computed by the config layer from the
    students and each protocol's students), in order, without repeats."""
    cells = cfg["evaluate"].get("cells")
    if not cells:
        raise TeddyError("evaluate.cells is empty or missing: no [arch, protocol] pair to evaluate")
    pairs = []
    for cell in cells:
        if (not isinstance(cell, (list, tuple)) or len(cell) != 2
                or not all(isinstance(v, str) and v for v in cell)):
            raise TeddyError(f"evaluate.cells: {cell!r} is not an [arch, protocol] pair of names")
        pairs.append((cell[0], cell[1]))
    return list(dict.fromkeys(pairs))


def run_protocols(cfg: dict) -> list[str]:
    """The protocols of evaluate.cells, in order of first appearance (one plot each)."""
    return list(dict.fromkeys(protocol for _, protocol in cell_pairs(cfg)))


def requested_cells(cfg: dict) -> pd.DataFrame:
    """Every (method, ipc, arch, protocol, seed) the config asks evaluate for: methods x ipc x
    evaluate.cells x seeds, at each method's IPCs (its `ipc` list, else distill.ipc) and seeds (its
    `eval_seeds`, else evaluate.seeds)."""
    rows = [(method, int(ipc), arch, protocol, seed)
            for method in cfg["distill"]["methods"] for ipc in method_ipcs(cfg["distill"], method)
            for arch, protocol in cell_pairs(cfg) for seed in method_eval_seeds(cfg, method)]
    return pd.DataFrame(rows, columns=["method", "ipc", "arch", "protocol", "seed"])


def requested_ceiling_cells(cfg: dict) -> pd.DataFrame:
    """Every (arch, protocol, seed) ceiling run the config asks for: evaluate.cells x ceiling seeds
    (empty without `ceiling:`)."""
    if not cfg.get("ceiling"):
        return pd.DataFrame(columns=["arch", "protocol", "seed"])
    rows = [(arch, protocol, int(seed)) for arch, protocol in cell_pairs(cfg)
            for seed in cfg["ceiling"].get("seeds", [0])]
    return pd.DataFrame(rows, columns=["arch", "protocol", "seed"])


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
    return pd.DataFrame(rows)


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
    """One row per (method, ipc, arch, protocol): mean, std, seeds."""
    return _mean_std(results, ["method", "ipc", "arch", "protocol"])


def method_gaps(table: pd.DataFrame, method: str, baselines) -> pd.DataFrame:
    """`method` against each baseline in every (ipc, arch, protocol) cell both have (an
    accuracy_table): the difference of means in points and that difference in standard deviations
    of the difference, sqrt(std_a^2 + std_b^2) over seeds (NaN when either has one seed)."""
    keys = ["ipc", "arch", "protocol"]
    ours = table[table["method"] == method]
    rows = []
    for baseline in baselines:
        joined = ours.merge(table[table["method"] == baseline], on=keys, suffixes=("", "_baseline"))
        for r in joined.itertuples(index=False):
            spread = (r.std ** 2 + r.std_baseline ** 2) ** 0.5
            diff = r.mean - r.mean_baseline
            rows.append({"arch": r.arch, "protocol": r.protocol, "ipc": int(r.ipc), "method": method,
                         "baseline": baseline, "mean": r.mean, "std": r.std, "seeds": int(r.seeds),
                         "baseline_mean": r.mean_baseline, "baseline_std": r.std_baseline,
                         "baseline_seeds": int(r.seeds_baseline), "diff": round(diff, 2),
                         "sigmas": round(diff / spread, 2) if spread > 0 else float("nan")})
    columns = ["arch", "protocol", "ipc", "method", "baseline", "mean", "std", "seeds", "baseline_mean",
               "baseline_std", "baseline_seeds", "diff", "sigmas"]
    return pd.DataFrame(rows, columns=columns).sort_values(["arch", "protocol", "ipc", "baseline"],
                                                           ignore_index=True)


def ceiling_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, protocol) of the whole-training-set runs."""
    return _mean_std(results, ["arch", "protocol"])


def with_distill_seconds(table: pd.DataFrame, distilled_dir) -> pd.DataFrame:
    """Add each (method, ipc)'s distillation wall time, the `seconds` of its distill log.json
    (NaN where absent), so accuracy and cost sit side by side."""
    def seconds(method, ipc):
        path = Path(distilled_dir) / str(method) / f"ipc{int(ipc)}" / "log.json"
        return round(float(json.loads(path.read_text())["seconds"]), 1) if path.is_file() else float("nan")
    return table.assign(distill_seconds=[seconds(m, i) for m, i in zip(table["method"], table["ipc"])])


def paper_table(measured: pd.DataFrame, ceilings: pd.DataFrame | None = None,
                published: pd.DataFrame | None = None, method_order=None, protocol_order=None,
                kd_protocols=(), closest: dict | None = None) -> pd.DataFrame:
    """Long form of every block: student, protocol, kind (ceiling|measured|published|unmatched),
    method, ipc, mean, std, seeds, best, whole_train_set, norm, source, distill_seconds,
    closest_protocol. Blocks are keyed by (student, protocol). Ceiling rows (same student and
    protocol) repeat their one value in every IPC column of their block. A published row is placed
    in a block only when its protocol and its student are the block's (and at the block's IPCs; a
    published whole-dataset figure, no IPC, is repeated like a ceiling). Every published row no
    block matches follows as kind `unmatched` (its own student, protocol and IPC, NA for the whole
    set) with `closest_protocol`, the protocol we run it is best read against (closest_protocol,
    over `protocol_order` when given, e.g. the config's run_protocols, else the measured protocols in
    sorted order; `closest`: each protocol's nearest ones, from the protocol files). Our methods follow `method_order` (the config's order) when given, else
    alphabetical order."""
    if measured.empty:
        raise TeddyError("no measured results to tabulate")
    rows = []
    if published is not None:
        published = published.reset_index(drop=True)
    placed = set()  # published rows some block matched
    for (student, protocol), block in measured.groupby(["arch", "protocol"], sort=True):
        ipcs = sorted(int(i) for i in block["ipc"].unique())
        if ceilings is not None and not ceilings.empty:
            match = ceilings[(ceilings["arch"] == student) & (ceilings["protocol"] == protocol)]
            for c in match.itertuples(index=False):
                rows += [{"student": student, "protocol": protocol, "kind": "ceiling", "method": CEILING_NAME,
                          "ipc": i, "mean": c.mean, "std": c.std, "seeds": c.seeds, "whole_train_set": True,
                          "source": f"measured (protocol {protocol})"} for i in ipcs]
        for m in block.itertuples(index=False):
            rows.append({"student": student, "protocol": protocol, "kind": "measured", "method": m.method,
                         "ipc": int(m.ipc), "mean": m.mean, "std": m.std, "seeds": m.seeds, "source": "measured",
                         **({"distill_seconds": m.distill_seconds} if hasattr(m, "distill_seconds") else {})})
        if published is not None and not published.empty:
            match = published[(published["student"] == student) & (published["protocol"] == protocol)]
            placed.update(match.index)
            for p in match.itertuples(index=False):
                for i in (ipcs if pd.isna(p.ipc) else [int(p.ipc)] if int(p.ipc) in ipcs else []):
                    rows.append({"student": student, "protocol": protocol, "kind": "published", "method": p.method,
                                 "ipc": i, "mean": p.top1, "std": p.std, "seeds": pd.NA, "norm": p.norm,
                                 "whole_train_set": pd.isna(p.ipc), "source": p.source})
    if published is not None and not published.empty:
        run = list(protocol_order) if protocol_order else sorted(measured["protocol"].unique())
        for p in published.drop(index=sorted(placed)).itertuples(index=False):
            rows.append({"student": p.student, "protocol": p.protocol, "kind": "unmatched", "method": p.method,
                         "ipc": p.ipc, "mean": p.top1, "std": p.std, "seeds": pd.NA, "norm": p.norm,
                         "whole_train_set": pd.isna(p.ipc), "source": p.source,
                         "closest_protocol": closest_protocol(p.protocol, run, kd_protocols,
                                                              soft=p.labels == "soft", closest=closest)})
    table = pd.DataFrame(rows)
    for column in ("norm", "distill_seconds", "whole_train_set", "closest_protocol"):
        if column not in table:
            table[column] = pd.NA
    table["ipc"] = table["ipc"].astype("Int64")
    table["whole_train_set"] = table["whole_train_set"].fillna(False).astype(bool)
    is_measured = table["kind"] == "measured"
    column_best = table[is_measured].groupby(["student", "protocol", "ipc"])["mean"].transform("max")
    table["best"] = False
    table.loc[is_measured, "best"] = table.loc[is_measured, "mean"] == column_best
    table["section"] = (table["kind"] == "unmatched").astype(int)
    table["order"] = table["kind"].map(KIND_ORDER)
    rank = {m: i for i, m in enumerate(method_order or [])}
    table["method_rank"] = [rank.get(m, len(rank)) if k == "measured" else 0
                            for k, m in zip(table["kind"], table["method"])]
    table = table.sort_values(["section", "student", "protocol", "order", "method_rank", "method", "ipc"],
                              kind="stable")
    return table.drop(columns=["section", "order", "method_rank"]).reset_index(drop=True)[
        ["student", "protocol", "kind", "method", "ipc", "mean", "std", "seeds", "best", "whole_train_set", "norm",
         "source", "distill_seconds", "closest_protocol"]]


def _row_label(kind: str, method: str, norm) -> str:
    if kind == "published":
        return f"{method} (published, {norm} norm)" if isinstance(norm, str) else f"{method} (published)"
    return method


def mean_std_text(mean, std, pm: str = " ± ") -> str:
    """'mean ± std' to two decimals; the mean alone when std is missing (one seed)."""
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f}{pm}{std:.2f}"


def blocks(table: pd.DataFrame, pm: str = " ± ", bold=lambda s: f"**{s}**", missing: str = "–"):
    """[(student, protocol, grid)]: grid is a DataFrame, rows method (in table order), columns
    'IPC <n>', cells 'mean ± std' with the best measured value wrapped by `bold`. Unmatched
    published rows are not part of any block (unmatched_rows)."""
    out = []
    in_blocks = table[table["kind"] != "unmatched"]
    for (student, protocol), block in in_blocks.groupby(["student", "protocol"], sort=True):
        ipcs = sorted(int(i) for i in block["ipc"].unique())
        order, cells = [], {}
        for r in block.itertuples(index=False):
            name = _row_label(r.kind, r.method, r.norm)
            if name not in cells:
                order.append(name)
                cells[name] = {}
            text = mean_std_text(r.mean, r.std, pm)
            cells[name][f"IPC {int(r.ipc)}"] = bold(text) if r.best else text
        grid = pd.DataFrame([{"method": n, **{f"IPC {i}": cells[n].get(f"IPC {i}", missing) for i in ipcs}}
                             for n in order])
        out.append((student, protocol, grid))
    return out


def unmatched_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The published rows of the dataset that no (student, protocol) block matched."""
    return table[table["kind"] == "unmatched"]


def _ipc_text(ipc) -> str:
    return "whole training set" if pd.isna(ipc) else f"IPC {int(ipc)}"


def _unmatched_line(r, pm: str = " ± ") -> str:
    """method (student, IPC n): top1 ± std; protocol p; closest protocol we run: q"""
    return (f"{r.method} ({r.student}, {_ipc_text(r.ipc)}): {mean_std_text(r.mean, r.std, pm)}; protocol {r.protocol}; "
            f"closest protocol we run: {r.closest_protocol}")


def _seeds_note(table: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in table.loc[table["kind"] == "measured", "seeds"]})
    return "/".join(map(str, seeds))


def _percent(value) -> str:
    return f"{100 * float(value):.1f}%"


def context_lines(context: dict | None) -> list[str]:
    """The lines printed under a table's title from `context` (render_markdown): the teacher's
    test accuracy and each pool's member accuracies, given as fractions in [0, 1] (as the result
    JSONs store test_accuracy)."""
    context = context or {}
    lines = []
    if context.get("teacher_accuracy") is not None:
        lines.append(f"Teacher (base model): {_percent(context['teacher_accuracy'])} test")
    if context.get("ensemble_teachers"):
        listed = ", ".join(f"{arch} {_percent(acc)}" for arch, acc in context["ensemble_teachers"].items())
        lines.append(f"Other teachers of an ensemble (test): {listed}")
    for pool, members in (context.get("pools") or {}).items():
        listed = ", ".join(f"{member} {_percent(acc)}" for member, acc in members.items())
        lines.append(f"Pool {pool} (members' test accuracy): {listed}")
    return lines


def protocol_description(context: dict | None, protocol: str) -> str | None:
    """context["protocols"][protocol]: the one-line description printed under a block's heading."""
    return ((context or {}).get("protocols") or {}).get(protocol)


def render_markdown(dataset: str, table: pd.DataFrame, efficiency: pd.DataFrame | None = None,
                    context: dict | None = None) -> str:
    """The Markdown page. `context` (optional): {"protocols": {name: one-line description},
    "teacher_accuracy": fraction or None, "pools": {pool: {member: fraction}}}; the teacher and the
    pools are printed under the title, each protocol's description under its blocks' headings."""
    out = [f"# Results: {dataset}", ""]
    extra = context_lines(context)
    if extra:
        out += [f"- {line}" for line in extra] + [""]
    out += [f"Top-1 accuracy (%) on the real test set of students trained on the distilled sets, mean ± std "
            f"over {_seeds_note(table)} seeds. **Bold**: the best measured value of its column. The ceiling row "
            "trains the student on the whole real training set under the block's protocol. Published rows come "
            "from the literature, measured under the block's evaluation protocol on the same student; they are "
            "never part of our means and name their student's normalisation where the source gives it; sources "
            f"below. Published figures under other protocols are listed apart ({UNMATCHED_TITLE}).", ""]
    for student, protocol, grid in blocks(table):
        out += [f"## {student}, protocol {protocol}", ""]
        description = protocol_description(context, protocol)
        if description:
            out += [description, ""]
        out += [grid.to_markdown(index=False), ""]
    published = table[table["kind"] == "published"].drop_duplicates(["method", "source"])
    if not published.empty:
        out += ["## Published sources", ""]
        out += [f"- {r.method}: {r.source}" for r in published.itertuples(index=False)] + [""]
    unmatched = unmatched_rows(table)
    if not unmatched.empty:
        out += [f"## {UNMATCHED_TITLE}", "",
                "Published figures of this dataset whose protocol and student match none of our blocks: not "
                "comparable with our rows; each names the protocol we run that comes closest.", ""]
        out += [f"- {_unmatched_line(r)}. Source: {r.source}" for r in unmatched.itertuples(index=False)] + [""]
    if efficiency is not None and not efficiency.empty:
        out += ["## Efficiency (Snakemake benchmark files; peak GPU memory as logged by each job)", "",
                efficiency.astype(object).where(efficiency.notna(), "").to_markdown(index=False), ""]
    return "\n".join(out)


def latex_escape(text: str) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(table.get(ch, ch) for ch in str(text))


def render_latex(dataset: str, table: pd.DataFrame, context: dict | None = None) -> str:
    """One booktabs tabular: a \\multicolumn heading per (student, protocol) block (with the
    protocol's description from `context` when given); the teacher's accuracy in the caption; the
    unmatched published rows in a second tabular."""
    grids = blocks(table, pm=r" $\pm$ ", bold=lambda s: rf"\textbf{{{s}}}", missing="--")
    ipcs = sorted(int(i) for i in table.loc[table["kind"] != "unmatched", "ipc"].unique())
    columns = [f"IPC {i}" for i in ipcs]
    width = 1 + len(columns)
    teacher = (context or {}).get("teacher_accuracy")
    teacher_note = "" if teacher is None else \
        rf" Teacher (base model): {latex_escape(_percent(teacher))} test."
    lines = [r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(dataset)}: top-1 (\%) on the real test set, mean $\pm$ std over "
             rf"{_seeds_note(table)} seeds; best measured value per column in bold; published rows under the "
             rf"block's protocol.{teacher_note}}}",
             rf"\begin{{tabular}}{{l{'c' * len(columns)}}}", r"\toprule",
             " & ".join(["Method"] + columns) + r" \\"]
    for student, protocol, grid in grids:
        description = protocol_description(context, protocol)
        heading = f"{student}, protocol {protocol}" + (f": {description}" if description else "")
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(heading)}}}}} \\",
                  r"\midrule"]
        for row in grid.to_dict("records"):
            # cells carry our own LaTeX (\textbf, $\pm$); only names are escaped
            lines.append(" & ".join([latex_escape(row["method"])] + [row.get(c, "--") for c in columns]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    unmatched = unmatched_rows(table)
    if not unmatched.empty:
        lines += [r"\begin{table}[t]", r"\centering",
                  rf"\caption{{{latex_escape(dataset)}: {UNMATCHED_TITLE} (top-1 \%, not comparable with our "
                  r"rows), each with the closest protocol we run.}",
                  r"\begin{tabular}{lllcll}", r"\toprule",
                  r"Method & Student & IPC & Top-1 & Protocol & Closest protocol we run \\", r"\midrule"]
        for r in unmatched.itertuples(index=False):
            ipc = "whole set" if pd.isna(r.ipc) else str(int(r.ipc))
            lines.append(" & ".join([latex_escape(r.method), latex_escape(r.student), ipc,
                                     mean_std_text(r.mean, r.std, r" $\pm$ "), latex_escape(r.protocol),
                                     latex_escape(r.closest_protocol)]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def render_html(dataset: str, table: pd.DataFrame, efficiency: pd.DataFrame | None = None,
                context: dict | None = None) -> str:
    """A self-contained page of the blocks (Snakemake's report shows HTML files inline); `context`
    as for render_markdown."""
    parts = [f"<h1>Results: {html.escape(dataset)}</h1>"]
    extra = context_lines(context)
    if extra:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in extra) + "</ul>")
    parts.append(f"<p>Top-1 (%) on the real test set, mean ± std over {_seeds_note(table)} seeds; "
                 "<b>bold</b>: best measured value per column; published rows measured under the block's "
                 "protocol on the same student, never part of our means.</p>")
    for student, protocol, grid in blocks(table, bold=lambda s: f"<b>{html.escape(s)}</b>"):
        escaped = grid.map(lambda v: v if v.startswith("<b>") else html.escape(v))
        parts.append(f"<h2>{html.escape(student)}, protocol {html.escape(protocol)}</h2>")
        description = protocol_description(context, protocol)
        if description:
            parts.append(f"<p>{html.escape(description)}</p>")
        parts.append(escaped.to_html(index=False, escape=False, border=0))
    unmatched = unmatched_rows(table)
    if not unmatched.empty:
        parts += [f"<h2>{html.escape(UNMATCHED_TITLE)}</h2>",
                  "<ul>" + "".join(f"<li>{html.escape(_unmatched_line(r))}. Source: {html.escape(r.source)}</li>"
                                   for r in unmatched.itertuples(index=False)) + "</ul>"]
    if efficiency is not None and not efficiency.empty:
        parts += ["<h2>Efficiency</h2>", efficiency.to_html(index=False, border=0, na_rep="")]
    return "<!DOCTYPE html>\n<html><head><meta charset='utf-8'></head><body>\n" + "\n".join(parts) + \
        "\n</body></html>\n"
