"""What each job cost: wall time, CPU time and peak RSS from Snakemake's `benchmark:` files, and
the peak GPU memory each job recorded itself (teddy.runner.stage writes it as the last line of
the job's log; a stage may also put `peak_gpu_memory_mb()` into its JSON output)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch

from teddy.errors import TeddyError

GPU_MEMORY_TAG = "peak GPU memory (MiB):"
_GPU_LINE = re.compile(re.escape(GPU_MEMORY_TAG) + r"\s*([0-9.]+)")


def peak_gpu_memory_mb() -> float | None:
    """torch.cuda.max_memory_allocated of this process in MiB; None when CUDA was never used."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def gpu_memory_line() -> str | None:
    """The log line the efficiency table reads back (None on CPU-only jobs)."""
    peak = peak_gpu_memory_mb()
    return None if peak is None else f"{GPU_MEMORY_TAG} {peak}"


def read_peak_gpu_memory(log_path) -> float:
    """The last peak-GPU-memory line of a job's log; NaN when the job logged none (CPU)."""
    path = Path(log_path)
    if not path.is_file():
        return float("nan")
    found = _GPU_LINE.findall(path.read_text(errors="replace"))
    return float(found[-1]) if found else float("nan")


def log_for_benchmark(benchmark_path) -> Path:
    """results/<ds>/benchmarks/<stage>/<job>.tsv -> results/<ds>/logs/<stage>/<job>.log (every rule
    names its log and benchmark with the same wildcards)."""
    parts = list(Path(benchmark_path).parts)
    if "benchmarks" not in parts:
        return Path(benchmark_path).with_suffix(".log")
    i = len(parts) - 1 - parts[::-1].index("benchmarks")
    parts[i] = "logs"
    return Path(*parts).with_suffix(".log")


def job_costs(benchmark_paths, method_names=()) -> pd.DataFrame:
    """One row per job: stage, method ('' for stages not per method), job, wall_s, cpu_s,
    max_rss_mb, peak_gpu_mb. The stage is the first folder under benchmarks/; the method is the
    next path component when it names a configured method."""
    methods, rows = set(method_names), []
    for p in benchmark_paths:
        p = Path(p)
        try:
            bench = pd.read_csv(p, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise TeddyError(f"unreadable benchmark file {p}: {exc}") from None
        if "s" not in bench or bench.empty:
            raise TeddyError(f"benchmark file {p} has no 's' (wall seconds) value")
        parts = p.parts[p.parts.index("benchmarks") + 1:] if "benchmarks" in p.parts else p.parts[-2:]
        job = "/".join(parts[1:]).removesuffix(".tsv")
        rows.append({"stage": parts[0], "method": parts[1] if len(parts) > 2 and parts[1] in methods else "",
                     "job": job, "wall_s": float(bench["s"].iloc[0]),
                     "cpu_s": float(bench["cpu_time"].iloc[0]) if "cpu_time" in bench else float("nan"),
                     "max_rss_mb": float(bench["max_rss"].iloc[0]) if "max_rss" in bench else float("nan"),
                     "peak_gpu_mb": read_peak_gpu_memory(log_for_benchmark(p))})
    return pd.DataFrame(rows, columns=["stage", "method", "job", "wall_s", "cpu_s", "max_rss_mb", "peak_gpu_mb"])


def efficiency_table(benchmark_paths, method_names=()) -> pd.DataFrame:
    """Per (stage, method): jobs, total and longest wall time, total CPU time, peak RSS and peak
    GPU memory over its jobs (empty GPU column on CPU runs)."""
    jobs = job_costs(benchmark_paths, method_names)
    table = jobs.groupby(["stage", "method"], sort=True).agg(
        jobs=("job", "count"), wall_s=("wall_s", "sum"), max_job_wall_s=("wall_s", "max"),
        cpu_s=("cpu_s", "sum"), peak_rss_mb=("max_rss_mb", "max"), peak_gpu_mb=("peak_gpu_mb", "max"))
    return table.round(1).reset_index()
