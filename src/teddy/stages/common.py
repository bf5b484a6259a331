"""What the stages share: the Machine (where and how fast a job runs, never what it computes),
the dataset part of every stage's settings, and the shape/throughput tables their resources use.

A stage module (one per rule) defines

    settings(cfg, wildcards) -> dict   the one dict the job receives, records (a Snakemake param,
                                       so a change reruns exactly its jobs) and, for a distill
                                       shard, hashes into its batch markers and meta.json
    resources(settings, attempt, machine) -> dict   mem_mb, runtime (minutes), gpu, workers
    run(settings, inputs, outputs, machine)         the job itself; it reads nothing else

The Machine is handed to the job beside the settings. Snakemake records only builtin-typed
params, so a Machine (a dataclass) is never recorded: moving the data or changing worker counts
reruns nothing.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace

import torch

from teddy.data import dataset_info
from teddy.datasets import dataset_spec, image_counts
from teddy.errors import TeddyError
from teddy.models import arch_spec, model_from_spec

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
    # is (teddy.stages.distill.SPEED_KEYS: stack, compile)
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


# student recipe keys that set how fast a run is, not its numbers: they reach the job through the
# Machine (student_compile), so changing them reruns nothing
STUDENT_SPEED_KEYS = ("compile",)


def student_recipe_settings(recipe: dict, evaluate: dict | None = None) -> dict:
    """A student recipe as a stage records it: without the speed keys, with the config's
    evaluate.amp / channels_last added where set (they act on CUDA and change the numbers a little)."""
    out = {k: v for k, v in recipe.items() if k not in STUDENT_SPEED_KEYS}
    for key in ("amp", "channels_last"):
        if (evaluate or {}).get(key):
            out[key] = True
    return out


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


def model_spec(cfg: dict, arch: str) -> dict:
    return arch_spec(cfg, arch)


def build(spec: dict, info, seed: int | None = None):
    """A fresh model from its spec (arch + options); `seed` fixes the initial weights."""
    if seed is not None:
        torch.manual_seed(seed)  # the initial weights are part of what a seed controls
    return model_from_spec(spec, info)


# a trained model this close to chance (in accuracy points) is flagged at train time
NEAR_CHANCE_POINTS = 5.0


def near_chance_warning(accuracy: float, num_classes: int, what: str, key: str) -> str | None:
    """One warning line when `accuracy` (a fraction) is within NEAR_CHANCE_POINTS of chance,
    naming the recipe key to change; printed to the job's log (stderr), None otherwise."""
    chance = 100.0 / max(1, int(num_classes))
    if 100.0 * float(accuracy) - chance >= NEAR_CHANCE_POINTS:
        return None
    line = (f"warning: {what} scores {100.0 * float(accuracy):.1f}% on the test set, within "
            f"{NEAR_CHANCE_POINTS:g} points of chance ({chance:.1f}%): it teaches the tables' rows next to "
            f"nothing; give it more optimiser steps ({key})")
    print(line, file=sys.stderr)
    return line


def wildcard_ints(wildcards: dict, *names: str) -> dict:
    return {n: int(wildcards[n]) for n in names}


def first(files):
    """The first file of an input list, or None when it is empty."""
    files = list(files or [])
    return str(files[0]) if files else None


def student_processes(settings: dict, device: torch.device) -> int:
    """How many processes a student run uses: evaluate.processes, else gpus_per_job on CUDA, else
    1 (both are in the settings: CutMix partners and BatchNorm statistics are per process).
    Asking for more GPUs than are visible is an error."""
    gpus = int(settings["gpus_per_job"])
    processes = int(settings["processes"] or (gpus if device.type == "cuda" else 1) or 1)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise TeddyError(f"{processes} processes asked (gpus_per_job / evaluate.processes) but "
                         f"{torch.cuda.device_count()} GPUs are visible")
    return max(1, processes)


# ---- resources: shapes and throughputs (formulas in each stage's resources()) -------------------
#
# A retried job (Snakemake's `attempt` = 2, 3, ...) asks for `attempt` times the runtime and
# 1 + 0.5 (attempt - 1) times the memory. images/s of a model = STUDENT_IMAGES_PER_S[arch] x
# (224 / image_size)^2 x GPUs (one GPU, 224 px, bf16, online KD from a ResNet-18 teacher; CPU-only
# jobs: CPU_IMAGES_PER_S at 28-32 px). The GPU throughputs were measured on one H100
# (docs/eval_scale.md); on slower GPUs a runtime under-estimate costs a retry, which doubles it.

# measured on one H100 (benchmarks/gpu_student_throughput.py, batch 256, 2026-11-24: 3412 / 2137 /
# 1648 / 2664), rounded down
STUDENT_IMAGES_PER_S = {"resnet18": 3400.0, "resnet50": 2100.0, "resnet101": 1600.0, "mobilenet_v2": 2600.0}
DEFAULT_IMAGES_PER_S = 1500.0
CPU_IMAGES_PER_S = 400.0  # small convnets on 28-32 px images, 2 cores
# a dataset whose image counts are unknown where the DAG is built (your own folders, not visible)
FALLBACK_TRAIN_IMAGES, FALLBACK_TEST_IMAGES = 50000, 10000
OVERHEAD_MIN = 10.0
SAFETY = 1.5
FALLBACK_CLASSES = 1000  # a class-folder dataset whose tree is not visible where the DAG is built


def data_shape(dataset: dict) -> tuple[int, int, int]:
    """(classes, channels, image size) of a dataset section (with its root), without the
    normalisation a class-folder dataset only has once rule normalisation ran (resources are
    computed while the DAG is built)."""
    from teddy.image_folder import class_folders, is_folder_dataset, setting

    if not is_folder_dataset(dataset):
        info = dataset_info(dataset)
        return info.num_classes, info.channels, info.image_size
    try:
        classes = len(class_folders(dataset))
    except (TeddyError, OSError):
        classes = FALLBACK_CLASSES
    return classes, int(setting(dataset, "channels")), int(setting(dataset, "image_size"))


def shape(settings: dict, machine: Machine) -> tuple[int, int, int]:
    return data_shape(dataset_cfg(settings, machine))


def images_per_s(arch: str, image_size: int, gpus: int) -> float:
    if gpus == 0:
        return CPU_IMAGES_PER_S
    return STUDENT_IMAGES_PER_S.get(arch, DEFAULT_IMAGES_PER_S) * (224.0 / image_size) ** 2 * gpus


def train_images(settings: dict, machine: Machine) -> int:
    """Training images after the validation split and train_limit (teddy.datasets.image_counts)."""
    return image_counts(dataset_cfg(settings, machine))["train"] or FALLBACK_TRAIN_IMAGES


def test_images(settings: dict, machine: Machine) -> int:
    """Test images, from the dataset's published count: nothing is scanned (every evaluate job's
    resources ask for it)."""
    return dataset_spec(settings["dataset"]["name"]).test_images or FALLBACK_TEST_IMAGES


def runtime_min(seconds: float, attempt: int) -> int:
    return int(math.ceil((SAFETY * seconds / 60.0 + OVERHEAD_MIN) * attempt))


def memory_mb(mb: float, attempt: int) -> int:
    return int(math.ceil(mb * (1 + 0.5 * (attempt - 1))))


def request(mb: float, seconds: float, attempt: int, gpu: int = 0, workers: int = 0) -> dict:
    """One job's resources; `workers` (DataLoader processes) are added to the rule's threads."""
    return {"mem_mb": memory_mb(mb, attempt), "runtime": runtime_min(seconds, attempt), "gpu": int(gpu),
            "workers": int(workers)}


def training_request(settings: dict, machine: Machine, epochs: int, images: int, arch: str, attempt: int,
                     extra_mb: float = 0.0) -> dict:
    """A job training `arch` for `epochs` over `images` real images: 4 GB + 0.5 GB per worker."""
    size = shape(settings, machine)[2]
    seconds = int(epochs) * images / images_per_s(arch, size, machine.gpus_per_job)
    return request(4000 + machine.num_workers * 500 + extra_mb, seconds, attempt, machine.gpus_per_job,
                   machine.num_workers)


class Files(list):
    """Inputs or outputs outside Snakemake (tests, benchmarks): a list of every file, in order, whose
    named entries are attributes too, like Snakemake's `snakemake.input` (a named entry may be a
    list of files)."""

    def __init__(self, *files, **named):
        flat = [str(f) for f in files]
        for name, value in named.items():
            if isinstance(value, (list, tuple)):
                value = [str(v) for v in value]
                flat += value
            elif value is not None:
                value = str(value)
                flat.append(value)
            setattr(self, name, value)
        super().__init__(flat)
