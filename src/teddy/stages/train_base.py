"""Rule train_base: the base ("squeeze") model on the real training set, keeping a snapshot of
each wanted epoch beside it (for a prior pool); or (base.weights) pretrained weights, evaluated."""

from __future__ import annotations

from pathlib import Path

from teddy.datasets import dataset_info, load_split
from teddy.io import save_json
from teddy.machine import Machine, dataset_cfg, dataset_settings, resolve_device
from teddy.models import arch_spec, model_from_spec
from teddy.pool import save_model, train_snapshots
from teddy.pretrained import load_pretrained
from teddy.recipes import trained_epochs
from teddy.resources import test_images, train_images, training_request
from teddy.resume import remove_checkpoint
from teddy.train import evaluate_accuracy, near_chance_warning


def settings(cfg: dict, wildcards: dict) -> dict:
    """The base model of wildcard `arch` (base.arch; another architecture is a kd protocol's
    ensemble teacher, made with the same base section but keeping no snapshots: no pool reads it)."""
    base = cfg["base"]
    arch = str(wildcards.get("arch") or base["arch"])
    if arch != base["arch"]:
        base = {**base, "arch": arch, "snapshot_epochs": []}
    return {"dataset": dataset_settings(cfg), "base": base, "model": arch_spec(cfg, arch)}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    if settings["base"]["weights"]:  # given weights are only evaluated: one forward pass of the test split
        return training_request(settings, machine, 0, 0, settings["model"], attempt,
                                forward=test_images(settings, machine))
    recipe = settings["base"]["recipe"]
    return training_request(settings, machine, trained_epochs(recipe), train_images(settings, machine), settings["model"],
                            attempt)


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
        model = model_from_spec(settings["model"], dataset_info(data), seed=int(base["seed"]))
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
