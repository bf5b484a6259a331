"""Rule ceiling: the ceiling row of a (student, protocol) block: the protocol's student and
recipe on the whole real training set (validation split held out as everywhere; ceiling.epochs
may shorten the schedule), hard labels or online KD from the base model as the protocol says;
top-1 on the real test set."""

from __future__ import annotations

import time

from teddy.datasets import dataset_info, load_split
from teddy.efficiency import peak_gpu_memory_mb
from teddy.errors import TeddyError
from teddy.io import save_json
from teddy.machine import Machine, dataset_cfg, dataset_settings, resolve_device
from teddy.models import model_from_spec
from teddy.protocols import load_protocol, protocols_dir, student_spec, whole_set_recipe
from teddy.recipes import trained_epochs
from teddy.resources import train_images, training_request
from teddy.resume import remove_checkpoint
from teddy.student_run import labels_of, student_recipe_settings, teachers_setting
from teddy.teachers import load_teacher
from teddy.train import evaluate_accuracy, fit, targets_for


def settings(cfg: dict, wildcards: dict) -> dict:
    arch, name = str(wildcards["arch"]), str(wildcards["protocol"])
    protocol = load_protocol(name, protocols_dir(cfg))
    recipe = whole_set_recipe(protocol, cfg["ceiling"]["epochs"])
    # a ceiling's teacher, when its protocol has one, is always online (no store of the whole set)
    return {"dataset": dataset_settings(cfg), "protocol": name,
            "recipe": student_recipe_settings(recipe, cfg["evaluate"]), "model": student_spec(cfg, protocol, arch),
            "arch": arch, "labels": labels_of(protocol, "online"), "seed": int(wildcards["seed"]),
            **teachers_setting(protocol)}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    """A student on the whole real training set: as train_base, with the ceiling recipe."""
    return training_request(settings, machine, trained_epochs(settings["recipe"]), train_images(settings, machine),
                            settings["model"], attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """inputs.teacher (online_kd only); outputs[0] the result JSON, the checkpoint beside it."""
    arch, labels, seed, protocol = settings["arch"], settings["labels"], settings["seed"], settings["protocol"]
    if labels not in ("hard", "online_kd"):
        raise TeddyError(f"ceiling labels must be hard or online_kd, got '{labels}'")
    out_json = str(outputs[0])
    checkpoint = out_json.removesuffix(".json") + ".ckpt"
    data = dataset_cfg(settings, machine)
    device = resolve_device(machine.device)
    train_set = load_split(data, "train")
    teacher_paths = [str(p) for p in getattr(inputs, "teacher", None) or []]
    teacher = load_teacher(teacher_paths, settings.get("teachers")) if labels == "online_kd" else None
    info = dataset_info(data)
    model = model_from_spec(settings["model"], info, seed=seed)
    t0 = time.perf_counter()
    fit(model, train_set, {"eval_every": 0, **settings["recipe"]}, device, seed=seed,
        targets=targets_for(teacher), checkpoint_path=checkpoint, desc=f"ceiling {arch} {protocol} seed{seed}",
        info=info)
    result = {"arch": arch, "protocol": protocol, "labels": labels, "seed": seed, "train_images": len(train_set),
              "test_accuracy": evaluate_accuracy(model, load_split(data, "test"), device),
              "train_seconds": time.perf_counter() - t0, "peak_gpu_mb": peak_gpu_memory_mb()}
    save_json(result, out_json)
    remove_checkpoint(checkpoint)
    return result
