"""Rule train_prior: a prior pool's own short from-scratch run (pools.<name>.recipe), for its
snapshots: a pretrained base model has no early epochs to take them from."""

from __future__ import annotations

from pathlib import Path

from teddy.io import save_json
from teddy.machine import Machine, dataset_settings
from teddy.models import arch_spec
from teddy.pool import train_snapshots
from teddy.recipes import trained_epochs
from teddy.resources import train_images, training_request
from teddy.resume import remove_checkpoint


def settings(cfg: dict, wildcards: dict) -> dict:
    pool = wildcards["pool"]
    return {"dataset": dataset_settings(cfg), "base": cfg["base"], "model": arch_spec(cfg, cfg["base"]["arch"]),
            "pool": cfg["pools"][pool], "pool_name": pool}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    recipe = settings["pool"].get("recipe") or settings["base"]["recipe"]
    return training_request(settings, machine, trained_epochs(recipe), train_images(settings, machine),
                            settings["model"], attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """outputs.metrics; the snapshots and the checkpoint lie beside it."""
    pool = settings["pool"]
    wanted = [int(e) for e in pool.get("epochs") or []] or None
    run_dir = Path(outputs.metrics).parent
    checkpoint = run_dir / "train.ckpt"
    _, history, snapshots, seconds = train_snapshots(settings, machine, pool["recipe"], wanted,
                                                     run_dir / "snapshots", checkpoint,
                                                     desc=f"prior run {settings['pool_name']}")
    metrics = {"arch": settings["model"]["arch"], "history": history, "train_seconds": seconds,
               "snapshots": snapshots}
    save_json(metrics, outputs.metrics)
    remove_checkpoint(checkpoint)
    return metrics
