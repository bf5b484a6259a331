"""What the benchmark scripts share: the machine's name, a timing helper, a config's jobs
(teddy.jobs.job_list, the workflow's own DAG), Markdown table heads, and the student-throughput
measurement and grid projection of student_throughput.py and gpu_student_throughput.py.

Not a benchmark: the scripts import it as `common`, putting benchmarks/ on sys.path first, so that
it is found also where a test loads a script by its path (tests/fixtures.py `benchmark`, runpy).
torch and the training code are imported inside the functions that need them, so that the
table scripts (calibration_table.py, method_gaps.py) start without them.
"""

from __future__ import annotations

import copy
import platform
import time
from collections import Counter
from pathlib import Path

import yaml

from teddy.config import load_config
from teddy.jobs import Job, job_list

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo's "model name"), else what platform knows."""
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def sync(device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); nothing on CPU."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn, device=None, clock=time.perf_counter):
    """fn()'s result and the seconds it took on `clock` (wall time by default; time.process_time
    for this process's CPU time), the device's queued work finished before each reading."""
    sync(device)
    start = clock()
    result = fn()
    sync(device)
    return result, clock() - start


def load_config_file(path) -> dict:
    """A config file read and loaded as the workflow loads it (schema defaults, checks)."""
    return load_config(yaml.safe_load(Path(path).read_text()))


def config_jobs(cfg: dict) -> list[Job]:
    """The workflow's jobs for a config as read from its file (loaded on a copy: the scripts keep
    using the values as written)."""
    return job_list(load_config(copy.deepcopy(cfg)))


def job_counts(jobs: list[Job]) -> Counter:
    """rule -> number of jobs."""
    return Counter(job.rule for job in jobs)


def table_head(columns: list[str]) -> list[str]:
    """The header and separator lines of a Markdown table."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def second_epoch_rate(student, data, recipe: dict, device, teacher, info) -> float:
    """Images per second of teddy.train.fit's second epoch on `data` with online KD from `teacher`
    (the first epoch warms up cuDNN, the allocator and any compile)."""
    from teddy.train import fit, targets_for

    stamps = []

    def stamp(epoch, model, metrics):
        sync(device)
        stamps.append(time.perf_counter())

    sync(device)
    fit(student, data, recipe, device, seed=0, targets=targets_for(teacher), on_epoch_end=stamp, info=info)
    return len(data) / (stamps[1] - stamps[0])


def student_runs_per_ipc(jobs: list[Job]) -> dict[int, int]:
    """Student runs of each (student, protocol) cell at each IPC: the (method, seed) pairs of the
    evaluate jobs there (each method's own IPCs and eval_seeds), IPCs ascending."""
    pairs: dict[int, set] = {}
    for job in jobs:
        if job.rule == "evaluate":
            pairs.setdefault(job["ipc"], set()).add((job["method"], job["seed"]))
    return {ipc: len(pairs[ipc]) for ipc in sorted(pairs)}


def grid_hours(runs_per_ipc: dict[int, int], epochs_per_arch: dict[str, int], rates: dict[str, float],
               classes: int) -> dict[int, dict[str, float]]:
    """Hours of a student grid, training only: at each IPC, each student's runs of IPC x classes
    images for the epochs of all its cells (`epochs_per_arch`), at its rate (images per second)."""
    return {ipc: {arch: epochs_per_arch[arch] * ipc * classes / rate / 3600 * runs for arch, rate in rates.items()}
            for ipc, runs in runs_per_ipc.items()}


def cell_table_head(arch: str, protocol: str, columns: list[str]) -> list[str]:
    """A (student, protocol) block's heading and its table's head, as the result tables print them."""
    return [f"### {arch}, protocol {protocol}", "", *table_head(columns)]


def print_page(page: str, out=None) -> None:
    """Print a Markdown page, and write it to `out` when given (the scripts' --out)."""
    print(page)
    if out:
        Path(out).write_text(page)
