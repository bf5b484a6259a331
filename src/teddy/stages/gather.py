"""Rule gather: check every shard of one (method, IPC) and assemble the set: images/, meta.json,
grid.png, log.json."""

from __future__ import annotations

from pathlib import Path

from teddy.datasets import dataset_info
from teddy.jobs import method_recipe, recipe_shards
from teddy.machine import Machine, dataset_cfg, dataset_settings
from teddy.resources import SAFETY, request, shape
from teddy.shard_store import gather as gather_shards


def settings(cfg: dict, wildcards: dict) -> dict:
    method = str(wildcards["method"])
    return {"dataset": dataset_settings(cfg), "method": method, "ipc": int(wildcards["ipc"]),
            "recipe": method_recipe(cfg, method), "batches_per_shard": cfg["distill"]["batches_per_shard"]}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    """2 GB, 10 min + 1 min per 10,000 images (hard links, hashing)."""
    images = int(settings["ipc"]) * shape(settings, machine)[0]
    return request(2000, images / 10000 * 60 / SAFETY, attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """inputs.shards (each shard's done.json); outputs.meta, outputs.grid, outputs.log_json."""
    info = dataset_info(dataset_cfg(settings, machine))
    batches = sum(len(r) for r in recipe_shards(settings["recipe"], settings["ipc"], info.num_classes,
                                                settings["batches_per_shard"]))
    return gather_shards([Path(p).parent for p in inputs.shards], Path(outputs.meta).parent, outputs.grid,
                         outputs.log_json, method=settings["method"], ipc=settings["ipc"], num_batches=batches,
                         info=info)
