"""What a job asks the scheduler for: memory and runtime from the shapes and throughputs below,
and the dataset's shape and image counts where the DAG is built (before rule normalisation)."""

from __future__ import annotations

import math

from teddy.datasets import dataset_info, dataset_spec, image_counts
from teddy.errors import TeddyError
from teddy.image_folder import class_folders, is_folder_dataset, setting
from teddy.machine import Machine, dataset_cfg

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


