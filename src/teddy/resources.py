"""Cluster resources of every job, computed from the config (dataset, IPC, architecture).

workflow/rules/common.smk hands these to Snakemake as `resources:` (mem_mb, runtime in
minutes, cpus_per_task, gpu); a retried job (Snakemake's `attempt` = 2, 3, ...) asks for
`attempt` times the runtime and 1 + 0.5 (attempt - 1) times the memory. The formulas:

    images/s of a student  = STUDENT_IMAGES_PER_S[arch] * (224 / image_size)^2 * GPUs
                             (one GPU, 224 px, bf16, online KD from a ResNet-18 teacher;
                             CPU-only jobs: CPU_IMAGES_PER_S at 28-32 px)
    evaluate runtime       = 1.5 x (epochs x IPC x classes + test images) / images/s + 10 min
    relabel runtime        = 1.5 x epochs x IPC x classes / (3 x images/s of the teacher) + 10 min
    train_base / pool      = 1.5 x epochs x train images / images/s (base arch) + 10 min
    ceiling                = 1.5 x ceiling epochs x train images / images/s (student) + 10 min
    train_prior            = as train_base, with the prior pool's own recipe (pools.<name>.recipe)
    distill runtime        = 1.5 x iterations x images of one job / images/s (base arch) + 10 min
                             (one synthetic image-iteration costs about one student training
                             image: measured 29 s per 1000 steps of a batch of 100 on ResNet-18,
                             H100, benchmarks/gpu_distill_batch.py); images of one job = the set
                             (IPC x classes), or batches_per_shard x batch_size when sharded
    evaluate memory        = 3 GB + set in memory (IPC x classes x C x H x W x 4 B when below
                             evaluate.in_memory_max_mb, else 0) + per worker (0.5 GB + 2
                             prefetched micro-batches) + one stored-label epoch file
    other training memory  = 4 GB + workers x 0.5 GB (+ distill: 4 copies of one synthetic batch:
                             pixels, gradient, two Adam moments; batches are optimised one at a time)
    gather                 = 2 GB, 10 min + 1 min per 10,000 images (hard links, hashing)
    cpus_per_task          = the rule's threads + DataLoader workers (dataset.num_workers)

The GPU throughputs were measured on one H100 (docs/eval_scale.md); on slower GPUs a runtime
under-estimate costs a retry, which doubles it.
"""

from __future__ import annotations

import math

from teddy.data import dataset_info
from teddy.errors import TeddyError
from teddy.image_folder import class_folders, is_folder_dataset, setting

# images per second of training (forward + backward, plus the teacher's forward) at 224 px on one GPU
# measured on one H100 (benchmarks/gpu_student_throughput.py, batch 256, 2026-11-24: 3412 / 2137 /
# 1648 / 2664), rounded down
STUDENT_IMAGES_PER_S = {"resnet18": 3400.0, "resnet50": 2100.0, "resnet101": 1600.0, "mobilenet_v2": 2600.0}
DEFAULT_IMAGES_PER_S = 1500.0
CPU_IMAGES_PER_S = 400.0  # small convnets on 28-32 px images, 2 cores
TRAIN_IMAGES = {"fashion_mnist": 54000, "cifar10": 45000, "cifar100": 45000, "tiny_imagenet": 98000,
                "imagenet1k": 1255000}
TEST_IMAGES = {"fashion_mnist": 10000, "cifar10": 10000, "cifar100": 10000, "tiny_imagenet": 10000,
               "imagenet1k": 50000}
OVERHEAD_MIN = 10.0
SAFETY = 1.5


FALLBACK_CLASSES = 1000  # a class-folder dataset whose tree is not visible where the DAG is built


def data_shape(dataset_cfg: dict) -> tuple[int, int, int]:
    """(classes, channels, image size), without the normalisation a class-folder dataset only
    has once rule normalisation ran (resources are computed while the DAG is built)."""
    if not is_folder_dataset(dataset_cfg):
        info = dataset_info(dataset_cfg)
        return info.num_classes, info.channels, info.image_size
    try:
        classes = len(class_folders(dataset_cfg))
    except (TeddyError, OSError):
        classes = FALLBACK_CLASSES
    return classes, int(setting(dataset_cfg, "channels")), int(setting(dataset_cfg, "image_size"))


def gpus(cfg: dict, rule: str) -> int:
    return 0 if rule in ("aggregate", "pool_manifest", "normalisation", "gather") else int(cfg.get("gpus_per_job", 0))


def images_per_s(cfg: dict, arch: str) -> float:
    image_size = data_shape(cfg["dataset"])[2]
    n_gpus = gpus(cfg, "evaluate")
    if n_gpus == 0:
        return CPU_IMAGES_PER_S
    return STUDENT_IMAGES_PER_S.get(arch, DEFAULT_IMAGES_PER_S) * (224.0 / image_size) ** 2 * n_gpus


def _set_images(cfg: dict, ipc: int) -> int:
    return int(ipc) * data_shape(cfg["dataset"])[0]


def _distill_job_images(cfg: dict, ipc: int) -> int:
    """Synthetic images one distill job optimises: the set, or one shard's batches (the largest
    batch_size of the config's methods; set-level methods always hold the whole set)."""
    whole = _set_images(cfg, ipc)
    per_shard = cfg["distill"].get("batches_per_shard")
    if per_shard is None:
        return whole
    batch = max([int(m.get("batch_size", 100)) for m in cfg["distill"]["methods"].values()] + [1])
    return min(whole, int(per_shard) * batch)


def runtime_min(cfg: dict, rule: str, ipc: int = 1, arch: str | None = None, attempt: int = 1) -> int:
    name = cfg["dataset"]["name"]
    base_arch = cfg["base"]["arch"]
    seconds = 0.0
    if rule == "evaluate":
        epochs = int(cfg["evaluate"]["recipe"]["epochs"])
        seconds = (epochs * _set_images(cfg, ipc) + TEST_IMAGES.get(name, 10000)) / images_per_s(cfg, arch)
    elif rule == "relabel":
        epochs = int(cfg["evaluate"]["recipe"]["epochs"])
        seconds = epochs * _set_images(cfg, ipc) / (3 * images_per_s(cfg, base_arch))
    elif rule in ("train_base", "pool_member", "train_prior"):
        recipe = cfg["base"]["recipe"]
        if rule == "train_prior":  # the longest of the prior pools' own runs
            own = [p["recipe"] for p in (cfg.get("pools") or {}).values() if p.get("recipe")]
            recipe = max(own, key=lambda r: int(r["epochs"])) if own else recipe
        train = min(TRAIN_IMAGES.get(name, 50000), int(cfg["dataset"].get("train_limit") or 10**9))
        seconds = int(recipe["epochs"]) * train / images_per_s(cfg, base_arch)
        if rule == "pool_member":
            seconds /= max(1, int(recipe["epochs"]))  # a snapshot copy or one fine-tuning epoch
    elif rule == "ceiling":  # a student on the whole real training set
        train = min(TRAIN_IMAGES.get(name, 50000), int(cfg["dataset"].get("train_limit") or 10**9))
        seconds = int(cfg["ceiling"]["recipe"]["epochs"]) * train / images_per_s(cfg, arch)
    elif rule == "distill":
        iterations = max([int(m.get("iterations", 1000)) for m in cfg["distill"]["methods"].values()] + [1])
        seconds = iterations * _distill_job_images(cfg, ipc) / images_per_s(cfg, base_arch)
    elif rule == "gather":
        seconds = _set_images(cfg, ipc) / 10000 * 60 / SAFETY
    return int(math.ceil((SAFETY * seconds / 60.0 + OVERHEAD_MIN) * attempt))


def workers(cfg: dict, rule: str) -> int:
    if rule == "evaluate" or rule == "relabel":
        return int(cfg["evaluate"].get("num_workers", cfg["dataset"].get("num_workers", 0)))
    return int(cfg["dataset"].get("num_workers", 0)) if rule in ("train_base", "train_prior", "pool_member",
                                                                "distill", "ceiling") else 0


def mem_mb(cfg: dict, rule: str, ipc: int = 1, attempt: int = 1) -> int:
    classes, channels, size = data_shape(cfg["dataset"])
    set_mb = _set_images(cfg, ipc) * channels * size ** 2 * 4 / 2**20
    n_workers = workers(cfg, rule)
    if rule in ("evaluate", "relabel"):
        ev = cfg["evaluate"]
        recipe = ev["recipe"]
        in_memory = set_mb if set_mb <= float(ev.get("in_memory_max_mb", 1024)) else 0.0
        micro = int(recipe["batch_size"]) / max(1, int(recipe.get("accumulate", 1)))
        batch_mb = micro * channels * size ** 2 * 4 / 2**20
        k = int(ev.get("keep_topk") or classes)
        epoch_labels_mb = _set_images(cfg, ipc) * (4 * k + 25) / 2**20
        mb = 3000 + in_memory + n_workers * (500 + 2 * batch_mb) + 4 * batch_mb + epoch_labels_mb
    elif rule in ("train_base", "train_prior", "pool_member", "distill", "ceiling"):
        batch = max([int(m.get("batch_size", 100)) for m in cfg["distill"]["methods"].values()] + [1])
        batch_mb = min(batch, _set_images(cfg, ipc)) * channels * size ** 2 * 4 / 2**20 if rule == "distill" else 0.0
        mb = 4000 + n_workers * 500 + batch_mb * 4  # one batch's images, grads, Adam moments
    else:
        mb = 2000
    return int(math.ceil(mb * (1 + 0.5 * (attempt - 1))))


def cpus(cfg: dict, rule: str, threads: int) -> int:
    return int(threads) + workers(cfg, rule)
