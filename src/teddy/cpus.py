"""How many CPUs a job asks for and how it splits them between its threads and its DataLoader
workers. Many clusters cap the CPUs a job may ask for per GPU (8 to 16 is common): a GPU job
whose configured threads plus workers exceed `cpus_per_gpu` x its GPUs gets both scaled down to
the cap, in proportion. The request and the running job use the same split (fit_workers), so a
thread count overridden on the command line moves both."""

from __future__ import annotations


def fit_workers(threads: int, workers: int, gpus: int, cpus_per_gpu: int | None) -> int:
    """The DataLoader workers that fit beside `threads` under the cap (all of them on CPU jobs
    or without a cap)."""
    if not gpus or not cpus_per_gpu:
        return int(workers)
    return max(0, min(int(workers), int(cpus_per_gpu) * int(gpus) - int(threads)))


def cpu_split(threads: int, workers: int, gpus: int, cpus_per_gpu: int | None) -> tuple[int, int]:
    """(threads, workers) a job runs with: as configured, or, for a GPU job above
    cpus_per_gpu x gpus CPUs, both scaled down to that cap in proportion (at least one thread)."""
    threads, workers = int(threads), int(workers)
    cap = int(cpus_per_gpu) * int(gpus) if gpus and cpus_per_gpu else None
    if cap is None or threads + workers <= cap:
        return threads, workers
    threads = max(1, min(cap, round(cap * threads / (threads + workers))))
    return threads, fit_workers(threads, workers, gpus, cpus_per_gpu)
