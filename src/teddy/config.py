"""Checks the schema cannot express: names that must exist in a registry or in the config."""

from __future__ import annotations

from teddy.data import dataset_info
from teddy.errors import TeddyError
from teddy.methods import METHODS
from teddy.models import MODELS
from teddy.pool import member_names


def check_config(cfg: dict) -> None:
    """Raise TeddyError naming the offending key; called when the workflow loads."""
    dataset_info(cfg["dataset"])
    archs = [cfg["base"]["arch"]] + list(cfg["evaluate"]["students"])
    for arch in archs:
        if arch not in MODELS:
            raise TeddyError(f"unknown architecture '{arch}' (config keys base.arch / evaluate.students); "
                             f"registered: {sorted(MODELS)}")
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
    for name, recipe in cfg["distill"]["methods"].items():
        if recipe["method"] == "import" and not recipe.get("path"):
            raise TeddyError(f"distill.methods.{name} is an import but names no ImageFolder (key path)")
    topk = cfg["evaluate"].get("keep_topk")
    num_classes = dataset_info(cfg["dataset"]).num_classes
    if topk is not None and int(topk) > num_classes:
        raise TeddyError(f"evaluate.keep_topk={topk} exceeds the dataset's {num_classes} classes")
    snapshots = cfg["base"].get("snapshot_epochs")
    epochs = int(cfg["base"]["recipe"]["epochs"])
    for name, pool in cfg.get("pools", {}).items():
        for e in pool.get("epochs") or []:
            if int(e) > epochs or (snapshots and int(e) not in snapshots):
                raise TeddyError(f"pools.{name}.epochs asks for epoch {e}, beyond the base run's snapshots "
                                 f"(base.recipe.epochs={epochs}, base.snapshot_epochs={snapshots})")
