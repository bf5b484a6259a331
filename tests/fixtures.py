"""Shared test helpers: tiny datasets written in the real on-disk formats (IDX, CIFAR pickles,
ImageFolder), a tiny workflow config and work directory, and `snakemake` run as a subprocess
(as a user runs it), locally or through the SLURM profiles."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"  # shipped: a real cluster's
SLURM_TEST_PROFILE = REPO / "tests" / "slurm" / "profile"  # the local test cluster's pins, layered over it


def tiny_config(data_root: Path) -> dict:
    """The default config shrunk to seconds per job on the IDX fixture (write_fashion_mnist)."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["dataset"]["root"] = str(data_root)
    cfg["results_dir"] = "results/tiny"
    cfg["arch_options"] = {"convnet": {"depth": 2, "width": 8}}
    cfg["base"]["recipe"]["epochs"] = 3
    cfg["base"]["recipe"]["batch_size"] = 64
    cfg["pools"]["prior"]["epochs"] = [1, 2]
    cfg["distill"]["ipc"] = [1, 2]
    cfg["distill"]["methods"]["teddy"].update(iterations=6, batch_size=20)
    cfg["evaluate"]["students"] = ["convnet", "resnet10_w16"]
    cfg["evaluate"]["seeds"] = [0, 1]
    cfg["protocols_dir"] = str(tiny_protocols(Path(data_root).parent / "protocols"))
    # the ceiling rows: each student on the whole (tiny) training set, one epoch
    cfg["ceiling"] = {"seeds": [0], "epochs": 1}
    return cfg


def tiny_protocols(folder: Path, epochs: int = 3) -> Path:
    """The repository's protocols (config/protocols/) at `epochs` epochs (milestones scaled),
    written to `folder`: what tiny_config evaluates with."""
    from teddy.protocols import whole_set_recipe

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "config" / "protocols").glob("*.yaml")):
        protocol = yaml.safe_load(path.read_text())
        protocol["recipe"] = whole_set_recipe(protocol, epochs)
        (folder / path.name).write_text(yaml.safe_dump(protocol, sort_keys=False))
    return folder


def set_protocol(cfg: dict, name: str | None = None, **recipe) -> dict:
    """Change the recipe of protocol `name` (default the config's first) in cfg's protocols_dir."""
    name = name or cfg["evaluate"]["protocols"][0]
    path = Path(cfg["protocols_dir"]) / f"{name}.yaml"
    protocol = yaml.safe_load(path.read_text())
    protocol["recipe"].update(recipe)
    path.write_text(yaml.safe_dump(protocol, sort_keys=False))
    return protocol


def write_workdir(tmp_path: Path, cfg: dict) -> Path:
    """A work directory whose config/config.yaml is `cfg` (what `snakemake` reads by default)."""
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def snakemake_cmd(workdir: Path, *args: str, slurm: bool = False) -> list[str]:
    """The command line of the workflow run on `workdir`; `slurm`: through the shipped SLURM
    profile with the test cluster's profile over it."""
    profiles = ["--profile", str(SLURM_PROFILE), "--workflow-profile", str(SLURM_TEST_PROFILE)] if slurm else []
    return SNAKEMAKE + profiles + ["--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]


def snakemake(workdir: Path, *args, timeout=600, umask: int | None = None):
    return subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def dry_run(tmp_path: Path, config_file: str, edit=None) -> tuple[dict, str]:
    """`snakemake -n` of config/<config_file> in a work folder holding a copy of config/ (as a
    checkout does), after `edit(cfg)` where given (then the file is rewritten): (cfg, output),
    the run checked to succeed."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(REPO / "config", work / "config")
    path = work / "config" / config_file
    cfg = yaml.safe_load(path.read_text())
    if edit is not None:
        cfg = edit(cfg)
        path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(work, "-n", "--configfile", str(path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return cfg, out


def benchmark(name: str):
    """benchmarks/<name>.py as a module (for the code a benchmark keeps to itself)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job_list_matches_dry_run(cfg: dict, out: str) -> dict[str, int]:
    """teddy.jobs.job_list is the workflow's DAG: per rule, as many jobs as the dry run `out` of
    `cfg` scheduled, each job once. Returns the scheduled counts (without rule all)."""
    from collections import Counter

    from teddy.config import load_config
    from teddy.jobs import job_list

    scheduled = job_counts(out)
    assert scheduled.pop("all") == 1  # the target rule: no job of job_list's
    jobs = job_list(load_config(cfg))
    assert dict(Counter(job.rule for job in jobs)) == scheduled
    assert len(set(jobs)) == len(jobs)
    return scheduled


def killed_then_resumed(run, module, name: str, kill_at_call: int, checkpoint: Path, monkeypatch):
    """Runs `run(checkpoint)` with `module.name` raising KeyboardInterrupt at its `kill_at_call`-th
    call (a job killed mid-run), checks a checkpoint was left, then runs it again unpatched from
    that checkpoint and returns the resumed result."""
    import pytest

    original, calls = getattr(module, name), []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at_call:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, dies)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint)
    assert checkpoint.exists() and len(calls) == kill_at_call
    monkeypatch.setattr(module, name, original)
    return run(checkpoint)


def job_counts(output: str) -> dict[str, int]:
    """rule -> number of jobs, from the "Job stats:" table of a (dry) run's output."""
    table = output.split("Job stats:", 1)[1]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if rule != "total"}


def class_patterns(n: int, num_classes: int, size: int, channels: int, seed: int = 0):
    """Images whose class is visible (a bright band at a class-specific row) plus noise, so
    that tiny models can learn something in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, channels, size, size)).astype(np.uint8)
    band = max(1, size // num_classes)
    for i, c in enumerate(labels):
        row = (c * size) // num_classes
        images[i, :, row:row + band, :] = 220
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path = Path(str(path) + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(root: Path, n_train: int = 300, n_test: int = 100, gz: bool = True) -> Path:
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = class_patterns(n, 10, 28, 1, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images[:, 0], gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


def write_cifar(root: Path, num_classes: int = 10, n_per_batch: int = 20) -> Path:
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        labels_key, meta_name, meta = "labels", "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder = root / "cifar-100-python"
        files = ["train", "test"]
        labels_key, meta_name = "fine_labels", "meta"
        meta = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"k{i}" for i in range(20)]}
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        images, labels = class_patterns(n_per_batch, num_classes, 32, 3, seed=i)
        entry = {"data": images.reshape(n_per_batch, -1), labels_key: [int(v) for v in labels]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / meta_name, "wb") as fh:
        pickle.dump(meta, fh)
    return root


def write_image_folder(root: Path, classes=("n01443537", "n01629819", "n01641577"), per_class: int = 4,
                       size: int = 64, words: bool = True) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for k, wnid in enumerate(classes):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            images, _ = class_patterns(per_class, len(classes), size, 3, seed=k)
            for j in range(per_class):
                Image.fromarray(images[j].transpose(1, 2, 0)).save(d / f"{wnid}_{j}.JPEG")
    if words:
        (root / "words.txt").write_text("".join(f"{w}\tthing {i}, other\n" for i, w in enumerate(classes)))
    return root


def write_class_folders(root: Path, classes, per_class=3, size=20, channels=3, test_split="val",
                        per_class_test=2, ext="png") -> Path:
    """A generic ImageFolder tree (train/ and val/ or test/, one folder per class) of small
    lossless images whose class is visible (class_patterns)."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    for split, n in (("train", per_class), (test_split, per_class_test)):
        for k, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            images, _ = class_patterns(n, len(classes), size, channels, seed=k + (0 if split == "train" else 100))
            for j in range(n):
                pixels = images[j, 0] if channels == 1 else images[j].transpose(1, 2, 0)
                Image.fromarray(pixels, mode).save(d / f"{name}_{j}.{ext}")
    return root


def stand_in(name: str, root, cfg: dict):
    """A few images of the dataset in its real on-disk format; a class-folder tree (counted when
    the config loads) holds enough per class for the config's largest IPC and RDED candidates."""
    if name == "cifar10":
        return write_cifar(root, 10, n_per_batch=20)
    if name == "cifar100":
        return write_cifar(root, 100, n_per_batch=100)
    rded = [m.get("candidates_per_class") or 0 for m in cfg["distill"]["methods"].values() if m["method"] == "rded"]
    needed = max(cfg["distill"]["ipc"] + rded)
    per_class = int(needed / (1 - cfg["dataset"]["val_fraction"])) + 2
    return write_image_folder(root, per_class=per_class, size=64 if name == "tiny_imagenet" else 80,
                              words=name == "tiny_imagenet")


def write_png_set(set_dir: Path, images, labels, mean, std, class_names, ipc: int, method: str = "fixture") -> Path:
    """A distilled set in the on-disk format (teddy.distilled_set); returns its meta.json."""
    from teddy.distilled_set import index_within_class, write_images, write_meta

    write_images(Path(set_dir) / "images", images, labels, index_within_class(labels), mean, std)
    write_meta(set_dir, method=method, ipc=ipc, class_names=class_names, mean=mean, std=std,
               channels=images.shape[1], image_size=images.shape[-1], config={})
    return Path(set_dir) / "meta.json"
