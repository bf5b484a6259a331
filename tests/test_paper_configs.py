"""The paper configs (config/{cifar10,cifar100,tiny_imagenet,imagenet1k}.yaml) carry the
paper's and its peers' recipes (the method description the README links, sections 2 and 4-5;
it is not part of this repository). Their dry runs on a stand-in dataset are in
tests/test_config_dry_runs.py."""

from __future__ import annotations

import pytest
import torch
import yaml
from fixtures import REPO, write_image_folder

from teddy.data import batches
from teddy.datasets import load_split
from teddy.jobs import method_shards, shard_count
from teddy.methods import METHODS
from teddy.protocols import load_protocol

PAPER_CONFIGS = ["cifar10", "cifar100", "tiny_imagenet", "imagenet1k"]

# the method description's sections 2 and 4-5: the values each config must carry
EXPECTED = {
    "cifar10": {"ipc": [1, 10, 50]},
    "cifar100": {"ipc": [1, 10, 50]},
    "tiny_imagenet": {"ipc": [10, 50, 100], "base": ("resnet18_small", 50, 0.2, 5), "alpha": 1.0,
                      "distill": (0.1, 4000, 100), "eval": ("sgd", 0.2, 100), "students": ["resnet18_small"]},
    "imagenet1k": {"ipc": [10, 50, 100], "alpha": 0.01, "distill": (0.25, 4000, 100), "eval": ("adamw", 1e-3, 300),
                   "students": ["resnet18", "resnet50", "resnet101", "mobilenet_v2"]},
}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_carries_the_method_recipe(name):
    cfg, want = load(name), EXPECTED[name]
    assert cfg["dataset"]["name"] == name and cfg["results_dir"] == f"results/{name}"
    assert cfg["gpus_per_job"] == 1 and cfg["device"] == "auto"
    assert cfg["distill"]["ipc"] == want["ipc"] and cfg["evaluate"]["seeds"] == [0, 1, 2]
    assert cfg["base"]["recipe"]["amp"] is True and cfg["base"]["recipe"]["channels_last"] is True
    assert cfg["evaluate"]["amp"] is True and cfg["evaluate"]["channels_last"] is True
    methods = cfg["distill"]["methods"]
    assert {"teddy", "random"} <= set(methods) and all(m["method"] in METHODS for m in methods.values())
    protocols = [load_protocol(n) for n in cfg["evaluate"]["protocols"]]
    kd = [p for p in protocols if p["labels"] == "kd"]
    assert kd and all(p["recipe"]["temperature"] == 20 for p in kd)  # every peer at this scale: T = 20
    teddy = methods["teddy"]
    if "alpha" in want:
        assert teddy["alpha"] == want["alpha"]
        assert (teddy["lr"], teddy["iterations"], teddy["batch_size"]) == want["distill"]
        ev = protocols[0]["recipe"]
        assert (ev["optimizer"], ev["lr"], ev["epochs"]) == want["eval"]
        assert cfg["evaluate"]["students"][: len(want["students"])] == want["students"]
    if "base" in want:
        b = cfg["base"]["recipe"]
        assert (cfg["base"]["arch"], b["epochs"], b["lr"], b["warmup_epochs"]) == want["base"]
        assert (b["momentum"], b["weight_decay"], b["batch_size"]) == (0.9, 1e-4, 256)
    if "rded" in methods:  # RDED: the base model observes; factor 2 at ImageNet resolution, 1 for small images
        rded = methods["rded"]
        assert cfg["pools"][rded["pool"]]["generator"] == "single" and rded.get("observer") in (None, "base")
        assert rded["factor"] == (2 if name == "imagenet1k" else 1)
        assert rded["crops_per_image"] == 5  # and enough candidates for one patch per source image:
        assert 300 <= rded["candidates_per_class"] >= max(cfg["distill"]["ipc"]) * rded["factor"] ** 2
    if "sre2l" in methods:  # the SRe2L baseline: the strong base model alone, from noise
        assert methods["sre2l"]["init"] == "noise"
        assert cfg["pools"][methods["sre2l"]["pool"]]["generator"] == "single"


def test_image_folder_loader_workers_follow_the_config(tmp_path):
    root = write_image_folder(tmp_path / "tiny", per_class=3, size=64)
    section = {"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.0}
    serial = load_split(section, "train")
    parallel = load_split({**section, "num_workers": 2}, "train")
    assert serial.num_workers == 0 and parallel.num_workers == 2 and parallel.subset([0, 1]).num_workers == 2
    cpu = torch.device("cpu")
    for (xa, ya), (xb, yb) in zip(batches(serial, 4, True, torch.Generator().manual_seed(0), cpu),
                                  batches(parallel, 4, True, torch.Generator().manual_seed(0), cpu), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_imagenet_config_uses_the_pretrained_teacher_both_pools_and_gpu_sized_shards():
    cfg = load("imagenet1k")
    assert cfg["base"]["weights"] == "torchvision" and cfg["base"]["arch"] == "resnet18"
    used = {m["pool"] for m in cfg["distill"]["methods"].values() if m["method"] == "teddy"}
    assert {cfg["pools"][p]["generator"] for p in used} == {"prior", "post"}
    assert cfg["pools"]["prior"]["recipe"]["epochs"] >= max(cfg["pools"]["prior"]["epochs"])
    # 1000 classes, batch 100: 10 batches per IPC index, 20 batches (one GPU job) per shard
    assert [shard_count(cfg, "teddy", ipc) for ipc in (10, 50, 100)] == [5, 25, 50]
    assert all(len(r) == 20 for r in method_shards(cfg, "sre2l", 100, 1000))
    assert [shard_count(load("tiny_imagenet"), "teddy", ipc) for ipc in (10, 50, 100)] == [1, 2, 4]
