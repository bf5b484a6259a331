"""Checks the schema cannot express: names that must exist in a registry or in the config."""

from __future__ import annotations

from pathlib import Path

from teddy.data import dataset_info
from teddy.datasets import check_dataset_counts
from teddy.errors import TeddyError
from teddy.image_folder import check_tree, is_folder_dataset, setting
from teddy.methods import METHODS, rded
from teddy.models import MODELS, check_image_size
from teddy.pool import member_names
from teddy.resources import data_shape


def check_dataset(cfg: dict) -> int:
    """The dataset section; returns the image size. For class-folder datasets the tree is checked
    too (classes present, none empty, none below the largest IPC) when dataset.root exists here:
    on a login node without the data, the jobs check it when they run."""
    dataset = cfg["dataset"]
    if not is_folder_dataset(dataset):
        return dataset_info(dataset).image_size
    for key in ("image_size", "channels"):
        if setting(dataset, key) is None:
            raise TeddyError(f"dataset.{key} is required for dataset.name: {dataset['name']}")
    channels = int(setting(dataset, "channels"))
    for key in ("mean", "std"):
        values = setting(dataset, key)
        if values is not None and len(values) != channels:
            raise TeddyError(f"dataset.{key} has {len(values)} values but dataset.channels is {channels}")
    if ("mean" in dataset) != ("std" in dataset):
        raise TeddyError("give both dataset.mean and dataset.std, or neither (then they are computed)")
    if Path(dataset["root"]).is_dir():
        check_tree(dataset, min_per_class=max(int(i) for i in cfg["distill"]["ipc"]))
    return int(setting(dataset, "image_size"))


def check_config(cfg: dict) -> None:
    """Raise TeddyError naming the offending key; called when the workflow loads."""
    image_size = check_dataset(cfg)
    archs = [cfg["base"]["arch"]] + list(cfg["evaluate"]["students"])
    for arch in archs:
        if arch not in MODELS:
            raise TeddyError(f"unknown architecture '{arch}' (config keys base.arch / evaluate.students); "
                             f"registered: {sorted(MODELS)}")
        check_image_size(arch, image_size, **(cfg.get("arch_options") or {}).get(arch, {}))
    for name, pool in cfg.get("pools", {}).items():
        member_names(pool)
    for ipc in cfg["distill"]["ipc"]:
        if int(ipc) < 1:
            raise TeddyError(f"IPC must be >= 1, got {ipc} (config key distill.ipc)")
    for name, recipe in cfg["distill"]["methods"].items():
        if recipe["method"] not in METHODS:
            raise TeddyError(f"unknown distillation method '{recipe['method']}' (config key "
                             f"distill.methods.{name}.method); known: {sorted(METHODS)}")
        pool = recipe.get("pool")
        if pool is not None and pool not in cfg.get("pools", {}):
            raise TeddyError(f"distill.methods.{name}.pool names pool '{pool}', which is not under 'pools'")
        if pool is not None and recipe.get("pool_size"):
            members = member_names(cfg["pools"][pool])
            if members and int(recipe["pool_size"]) > len(members):
                raise TeddyError(f"distill.methods.{name}.pool_size={recipe['pool_size']} but pool '{pool}' "
                                 f"has {len(members)} members")
        if recipe["method"] == "rded":
            members = member_names(cfg["pools"][pool])[: recipe.get("pool_size") or None] if pool else []
            rded.check_recipe(recipe, image_size, cfg["distill"]["ipc"], members,
                              f"distill.methods.{name}")
    for name, recipe in cfg["distill"]["methods"].items():
        if recipe["method"] == "import" and not recipe.get("path"):
            raise TeddyError(f"distill.methods.{name} is an import but names no ImageFolder (key path)")
    topk = cfg["evaluate"].get("keep_topk")
    num_classes = None if topk is None else data_shape(cfg["dataset"])[0]
    if topk is not None and int(topk) > num_classes:
        raise TeddyError(f"evaluate.keep_topk={topk} exceeds the dataset's {num_classes} classes")
    snapshots = cfg["base"].get("snapshot_epochs")
    epochs = int(cfg["base"]["recipe"]["epochs"])
    for name, pool in cfg.get("pools", {}).items():
        if pool["generator"] == "prior" and cfg["base"].get("weights") and not pool.get("recipe"):
            raise TeddyError(f"pools.{name}: base.weights is set, so the base model has no training snapshots; "
                             f"give pools.{name}.recipe (a short from-scratch run to take them from)")
        if pool.get("recipe"):
            if pool["generator"] != "prior":
                raise TeddyError(f"pools.{name}.recipe is only for prior pools (generator: {pool['generator']})")
            for e in pool.get("epochs") or []:
                if int(e) > int(pool["recipe"]["epochs"]):
                    raise TeddyError(f"pools.{name}.epochs asks for epoch {e}, beyond its own run "
                                     f"(pools.{name}.recipe.epochs={pool['recipe']['epochs']})")
            continue
        for e in pool.get("epochs") or []:
            if int(e) > epochs or (snapshots and int(e) not in snapshots):
                raise TeddyError(f"pools.{name}.epochs asks for epoch {e}, beyond the base run's snapshots "
                                 f"(base.recipe.epochs={epochs}, base.snapshot_epochs={snapshots})")
    check_dataset_counts(cfg)  # IPC and RDED candidates against the smallest class after the split
