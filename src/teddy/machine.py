"""The Machine: where the data and results are and how fast a job may go, never what it
computes. It is handed to every job beside its settings; Snakemake records only builtin-typed
params, so a Machine (a dataclass) is never recorded: moving the data or changing worker counts
reruns nothing. Also here: the dataset part of a stage's settings (what the data is) against the
Machine's part (where it is and how fast it is read)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from teddy.errors import TeddyError

# dataset keys that say where the data is or how fast it is read, not what it is: the Machine's
_DATASET_LOCATION_KEYS = ("root", "download", "download_mirror", "num_workers", "normalisation_file")


@dataclass(frozen=True)
class Machine:
    """Where the data and results are and how fast a job may go; never recorded as a setting."""
    dataset_root: str = "."
    download: bool = False
    download_mirror: str | None = None  # where dataset.download fetches from (None: torchvision's servers)
    num_workers: int = 0              # DataLoader workers reading the real data (dataset.num_workers)
    student_workers: int = 0          # ... reading a distilled set too large for memory (evaluate.num_workers)
    in_memory_max_mb: float = 1024.0  # distilled sets up to this size are held in memory (evaluate.in_memory_max_mb)
    device_memory_fraction: float = 0.25  # ... on the GPU, up to this share of its memory (evaluate.device_memory_fraction)
    student_compile: bool = False     # torch.compile students and teacher on CUDA (evaluate.compile)
    normalisation_file: str | None = None
    device: str = "auto"
    gpus_per_job: int = 0
    results_dir: str = "results"
    # per distillation method, the recipe keys that set how fast its set is made, never what it
    # is (teddy.jobs.SPEED_KEYS: stack, compile)
    distill_speed: dict = field(default_factory=dict)


def machine_from_config(cfg: dict) -> Machine:
    """The Machine of a loaded config (teddy.config.load_config filled in the defaults)."""
    dataset, ev = cfg["dataset"], cfg["evaluate"]
    return Machine(dataset_root=str(dataset["root"]), download=bool(dataset["download"]),
                   download_mirror=dataset.get("download_mirror"),
                   num_workers=int(dataset["num_workers"]), student_workers=int(ev["num_workers"]),
                   in_memory_max_mb=float(ev["in_memory_max_mb"]),
                   device_memory_fraction=float(ev["device_memory_fraction"]),
                   student_compile=bool(ev.get("compile", False)),
                   normalisation_file=dataset.get("normalisation_file"), device=str(cfg["device"]),
                   gpus_per_job=int(cfg["gpus_per_job"]), results_dir=str(cfg["results_dir"]),
                   distill_speed=distill_speed(cfg["distill"]))


def job_machine(machine: Machine, threads: int, cpus_per_task: int | None) -> Machine:
    """The Machine a running job uses: its DataLoader workers cut to the CPUs it was given beside
    its threads (Snakemake's threads and cpus_per_task, command-line overrides included), so the
    job uses what it asked for (teddy.cpus)."""
    if cpus_per_task is None:
        return machine
    room = max(0, int(cpus_per_task) - int(threads))
    return replace(machine, num_workers=min(machine.num_workers, room),
                   student_workers=min(machine.student_workers, room))


def distill_speed(distill: dict) -> dict:
    """Per method: its stack (the method's recipe key, else distill.stack) and compile flag."""
    # partial configs (a stage run on its own, in tests and benchmarks) may have no methods
    return {name: {"stack": int(recipe.get("stack", distill["stack"])), "compile": bool(recipe.get("compile", False))}
            for name, recipe in (distill.get("methods") or {}).items()}


def dataset_settings(cfg: dict) -> dict:
    """The dataset section without what says where it is or how fast it is read."""
    return {k: v for k, v in cfg["dataset"].items() if k not in _DATASET_LOCATION_KEYS}


def dataset_cfg(settings: dict, machine: Machine) -> dict:
    """The dataset section the readers in teddy.data take: the settings' dataset plus its place."""
    cfg = {**settings["dataset"], "root": machine.dataset_root, "download": machine.download,
           "num_workers": machine.num_workers}
    if machine.download_mirror:
        cfg["download_mirror"] = machine.download_mirror
    if machine.normalisation_file is not None:
        cfg["normalisation_file"] = machine.normalisation_file
    return cfg


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TeddyError(f"device '{name}' requested (config key device) but CUDA is not available")
    return torch.device(name)
