"""What a job asks the scheduler for: memory and runtime from the shapes and throughputs below,
and the dataset's shape and image counts where the DAG is built (before rule normalisation)."""

from __future__ import annotations

import functools
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from teddy.data import DatasetInfo
from teddy.datasets import dataset_info, dataset_spec, image_counts
from teddy.errors import TeddyError
from teddy.image_folder import class_folders, is_folder_dataset, setting
from teddy.machine import Machine, dataset_cfg
from teddy.models import model_from_spec

# ---- the cost model: a job's compute seconds = the FLOPs it does / the FLOP rate of its device ---------
#
# FLOPs: the forward FLOPs of one image, counted by PyTorch's own torch.utils.flop_counter on the
# meta device (nothing computed) for the architecture, its options and the image shape; a training
# step costs TRAIN_STEP_FORWARDS of them (the backward is about two forwards), a test or teacher
# pass one. FLOP rate on a GPU: per architecture, the student throughput measured on one H100 at
# 224 px times its step FLOPs there (an architecture without a measurement gets the lowest rate of
# those measured); on CPU, CPU_FLOPS_PER_S, measured on our 2-core machines from the demo's jobs
# (benchmarks/cost_model.py prints the predictions beside the measured times). The runtime asked is
# SAFETY x that + OVERHEAD_MIN (start-up, data loading, the test pass of small jobs), times the
# attempt: a job killed at its time limit asks for twice as long on its second try, three times on
# its third. Memory grows 1 + 0.5 (attempt - 1) per attempt.

TRAIN_STEP_FORWARDS = 3
# students trained with online KD from a ResNet-18 teacher, bf16, batch 256, 224 px, one H100
# (benchmarks/gpu_student_throughput.py, 2026-11-24: 3412 / 2137 / 1648 / 2664), rounded down
H100_STUDENT_IMAGES_PER_S = {"resnet18": 3400.0, "resnet50": 2100.0, "resnet101": 1600.0, "mobilenet_v2": 2600.0}
# the FLOP rate of training on 2 CPU cores: benchmarks/cost_model.py on the demo's benchmark files
# (AMD EPYC, 2026-12-07): 3.95e10 for train_base, the slowest job of a minute or more (the student
# jobs reached 1.6e10 to 6.1e10, the short ones held back by start-up), rounded down
CPU_FLOPS_PER_S = 3.0e10
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


@functools.lru_cache(maxsize=None)
def _forward_flops(spec_items: tuple, classes: int, channels: int, size: int) -> float:
    info = DatasetInfo("cost", int(classes), int(channels), int(size), (0.5,) * channels, (0.5,) * channels)
    with torch.device("meta"):
        model = model_from_spec(dict(spec_items), info)
        x = torch.empty(1, channels, size, size)
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return float(counter.get_total_flops())


def forward_flops(spec: dict, shape: tuple[int, int, int]) -> float:
    """FLOPs of one image's forward pass through the model of `spec` ({arch, options...}) for a
    dataset of `shape` (classes, channels, image size)."""
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items()))
    return _forward_flops(items, *(int(s) for s in shape))


def flops_per_s(arch: str, gpus: int) -> float:
    """The FLOP rate of `gpus` H100s training `arch`: its measured rate, or that of the measured
    architecture it is a variant of (resnet18_small: resnet18's blocks with a stride-1 stem), else
    the lowest measured; or of the CPU (gpus 0)."""
    if gpus == 0:
        return CPU_FLOPS_PER_S
    rates = {a: rate * TRAIN_STEP_FORWARDS * forward_flops({"arch": a}, (1000, 3, 224))
             for a, rate in H100_STUDENT_IMAGES_PER_S.items()}
    family = next((a for a in rates if arch == a or arch.startswith(a + "_")), None)
    return (rates[family] if family else min(rates.values())) * gpus


def compute_seconds(spec: dict, shape, gpus: int, trained: float = 0, forward: float = 0) -> float:
    """Seconds for `trained` training steps of one image each and `forward` forward-only images
    (test or teacher passes) through the model of `spec`."""
    flops = forward_flops(spec, shape) * (TRAIN_STEP_FORWARDS * trained + forward)
    return flops / flops_per_s(spec["arch"], gpus)


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
    """One job's resources; `workers` (DataLoader processes) are added to the rule's threads;
    `seconds`, the cost model's compute time before the margin, for benchmarks/cost_model.py."""
    return {"mem_mb": memory_mb(mb, attempt), "runtime": runtime_min(seconds, attempt), "gpu": int(gpu),
            "workers": int(workers), "seconds": float(seconds)}


def training_request(settings: dict, machine: Machine, epochs: int, images: int, spec: dict, attempt: int,
                     extra_mb: float = 0.0, forward: int = 0) -> dict:
    """A job training the model of `spec` for `epochs` over `images` real images (and `forward`
    forward-only images: a test pass): 4 GB + 0.5 GB per worker."""
    seconds = compute_seconds(spec, shape(settings, machine), machine.gpus_per_job, int(epochs) * images, forward)
    return request(4000 + machine.num_workers * 500 + extra_mb, seconds, attempt, machine.gpus_per_job,
                   machine.num_workers)
