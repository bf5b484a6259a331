"""Tables: method x IPC x student architecture (mean +- std over seeds), stage runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from teddy.errors import TeddyError


def collect_results(json_paths) -> pd.DataFrame:
    rows = []
    for p in json_paths:
        try:
            rows.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise TeddyError(f"unreadable evaluation result {p}: {exc}") from None
    if not rows:
        raise TeddyError("no evaluation results to aggregate")
    return pd.DataFrame(rows)


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, ipc, arch): mean and std (sample std, ddof=1) of top-1 over seeds, in %."""
    grouped = results.groupby(["method", "ipc", "arch"], sort=True)["test_accuracy"]
    table = grouped.agg(mean="mean", std="std", seeds="count").reset_index()
    table["mean"] = (table["mean"] * 100).round(2)
    table["std"] = (table["std"].fillna(0.0) * 100).round(2)
    return table


def with_distill_seconds(table: pd.DataFrame, distilled_dir) -> pd.DataFrame:
    """Add each (method, ipc)'s distillation wall time, the `seconds` of its distill log.json
    (NaN where absent), so accuracy and cost sit side by side."""
    def seconds(method, ipc):
        path = Path(distilled_dir) / str(method) / f"ipc{int(ipc)}" / "log.json"
        return round(float(json.loads(path.read_text())["seconds"]), 1) if path.is_file() else float("nan")
    return table.assign(distill_seconds=[seconds(m, i) for m, i in zip(table["method"], table["ipc"])])


def markdown_pivot(table: pd.DataFrame) -> str:
    """method x (arch, IPC) with 'mean ± std' cells."""
    cells = table.assign(cell=table["mean"].map("{:.2f}".format) + " ± " + table["std"].map("{:.2f}".format))
    pivot = cells.pivot_table(index="method", columns=["arch", "ipc"], values="cell", aggfunc="first")
    pivot.columns = [f"{arch} IPC{ipc}" for arch, ipc in pivot.columns]
    return pivot.reset_index().to_markdown(index=False)


def runtime_table(benchmark_paths) -> pd.DataFrame:
    """Wall time and peak memory per stage, from Snakemake `benchmark:` files (one per job).
    The stage is the first folder under benchmarks/; the job is the rest of the path."""
    rows = []
    for p in benchmark_paths:
        p = Path(p)
        try:
            bench = pd.read_csv(p, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise TeddyError(f"unreadable benchmark file {p}: {exc}") from None
        parts = p.parts[p.parts.index("benchmarks") + 1:] if "benchmarks" in p.parts else p.parts[-2:]
        rows.append({"stage": parts[0], "job": "/".join(parts[1:]).removesuffix(".tsv"),
                     "seconds": float(bench["s"].iloc[0]),
                     "max_rss_mb": float(bench["max_rss"].iloc[0]) if "max_rss" in bench else float("nan")})
    jobs = pd.DataFrame(rows, columns=["stage", "job", "seconds", "max_rss_mb"])
    return jobs.groupby("stage").agg(jobs=("job", "count"), total_seconds=("seconds", "sum"),
                                     max_job_seconds=("seconds", "max"),
                                     peak_rss_mb=("max_rss_mb", "max")).round(1).reset_index()


def published_rows(published_csv, dataset: str) -> pd.DataFrame:
    """The paper figures for this dataset (resources/published_results.csv), shown beside ours."""
    path = Path(published_csv)
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path, comment="#")
    return table[table["dataset"] == dataset].drop(columns=["dataset"])


def render_markdown(dataset: str, table: pd.DataFrame, runtimes: pd.DataFrame, published: pd.DataFrame) -> str:
    out = [f"# Results: {dataset}", "",
           "Top-1 accuracy (%) on the real test set of students trained on the distilled sets, "
           "mean ± std over seeds.", "", markdown_pivot(table), "",
           "## Per cell", "", table.to_markdown(index=False), "",
           "## Stage runtimes (from Snakemake benchmark files)", "", runtimes.to_markdown(index=False), ""]
    if not published.empty:
        out += ["## Published figures (not measured here; source in each row)", "",
                published.to_markdown(index=False), ""]
    return "\n".join(out)
