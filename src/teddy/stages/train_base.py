"""Rule train_base: the base ("squeeze") model on the real training set, keeping a snapshot of
each wanted epoch beside it (for a prior pool); or (base.weights) pretrained weights, evaluated."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from teddy.data import dataset_info, load_split
from teddy.io import save_json
from teddy.pool import save_model
from teddy.pretrained import load_pretrained
from teddy.stages.common import (Machine, build, dataset_cfg, dataset_settings, model_spec, near_chance_warning,
                                 test_images, training_request, train_images)
from teddy.resume import remove_checkpoint
from teddy.train import evaluate_accuracy, fit, resolve_device, trained_epochs


def settings(cfg: dict, wildcards: dict) -> dict:
    """The base model of wildcard `arch` (base.arch; another architecture is a kd protocol's
    ensemble teacher, made with the same base section but keeping no snapshots: no pool reads it)."""
    base = cfg["base"]
    arch = str(wildcards.get("arch") or base["arch"])
    if arch != base["arch"]:
        base = {**base, "arch": arch, "snapshot_epochs": []}
    return {"dataset": dataset_settings(cfg), "base": base, "model": model_spec(cfg, arch)}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    arch = settings["model"]["arch"]
    if settings["base"]["weights"]:
        # given weights are only evaluated on the test split: forward passes, costed at 3x a
        # training step's speed (as relabel costs them)
        return training_request(settings, machine, 1, -(-test_images(settings, machine) // 3), arch, attempt)
    recipe = settings["base"]["recipe"]
    return training_request(settings, machine, trained_epochs(recipe), train_images(settings, machine), arch, attempt)


def train_snapshots(settings: dict, machine: Machine, recipe: dict, wanted_epochs, snapshot_dir, checkpoint,
                    desc: str):
    """Train settings' model from scratch on the real training set with `recipe`, keeping a
    snapshot of each wanted epoch (all when None, none when empty); returns (model, history, snapshots, seconds).
    Shared by train_prior."""
    data = dataset_cfg(settings, machine)
    device = resolve_device(machine.device)
    train_set, val_set = load_split(data, "train"), load_split(data, "val")
    seed = int(settings["base"]["seed"])
    info = dataset_info(data)
    model = build(settings["model"], info, seed=seed)
    recipe = {"eval_every": 1, **recipe}
    wanted = set(range(1, trained_epochs(recipe) + 1) if wanted_epochs is None else wanted_epochs)
    snapshot_dir = Path(snapshot_dir)

    def keep_snapshot(epoch, model, metrics):
        if epoch in wanted:
            save_model(snapshot_dir / f"epoch{epoch}.pt", copy.deepcopy(model),
                       {"epoch": epoch, "val_accuracy": metrics.get("eval_accuracy")})

    t0 = time.perf_counter()
    history = fit(model, train_set, recipe, device, seed=seed, eval_set=val_set,
                          on_epoch_end=keep_snapshot, checkpoint_path=checkpoint, desc=desc, info=info)
    snapshots = {str(h["epoch"]): {"path": str(snapshot_dir / f"epoch{h['epoch']}.pt"),
                                   "val_accuracy": h["eval_accuracy"]} for h in history if h["epoch"] in wanted}
    return model, history, snapshots, time.perf_counter() - t0


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """outputs.model, outputs.metrics; the snapshots and the checkpoint lie beside them."""
    base = settings["base"]
    arch = settings["model"]["arch"]
    out_dir = Path(outputs.model).parent
    checkpoint = out_dir / "train.ckpt"
    data = dataset_cfg(settings, machine)
    device = resolve_device(machine.device)
    test_set = load_split(data, "test")
    if base["weights"]:
        model = build(settings["model"], dataset_info(data), seed=int(base["seed"]))
        source = load_pretrained(model, arch, base["weights"], bool(base["download_weights"]))
        model.to(device)
        history, snapshots, seconds, extra = [], {}, 0.0, {"weights": source}
    else:
        model, history, snapshots, seconds = train_snapshots(
            settings, machine, base["recipe"], base["snapshot_epochs"], out_dir / "snapshots", checkpoint,
            desc=f"base {arch}")
        extra = {}
    test_acc = evaluate_accuracy(model, test_set, device)
    near_chance_warning(test_acc, dataset_info(data).num_classes, f"the base model (teacher) {arch}",
                        "base.weights" if base["weights"] else "base.recipe.epochs")
    metrics = {"arch": arch, "test_accuracy": test_acc, "history": history, "train_seconds": seconds,
               "snapshots": snapshots, **extra}
    save_model(outputs.model, model, {"arch": arch, "test_accuracy": test_acc, **extra})
    save_json(metrics, outputs.metrics)  # written last: the pool rules depend on it
    remove_checkpoint(checkpoint)
    return metrics
