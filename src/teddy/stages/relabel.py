"""Rule relabel (kd protocols with evaluate.teacher_outputs: stored): the teacher's top-k logits on every augmented batch of
every epoch of one student seed's run, one file per epoch beside meta.json (teddy.label_store)."""

from __future__ import annotations

from teddy.datasets import dataset_info
from teddy.label_store import STORE_FORMAT_VERSION, write_label_store
from teddy.machine import Machine, dataset_cfg, dataset_settings, resolve_device
from teddy.protocols import cell_recipe, load_protocol, protocols_dir
from teddy.recipes import trained_epochs
from teddy.resources import compute_seconds, memory_mb, request, shape
from teddy.student_run import student_memory_mb, student_processes, student_recipe, student_recipe_settings, student_set
from teddy.teachers import load_teacher


def settings(cfg: dict, wildcards: dict) -> dict:
    """What a student run's batches are (shared with evaluate: relabel and evaluate must agree on
    the protocol's recipe at this IPC and on the processes, whose chunks draw the CutMix
    partners), and the teacher: the base model's architecture, or the protocol's `teachers`."""
    ev = cfg["evaluate"]
    name, ipc = str(wildcards["protocol"]), int(wildcards["ipc"])
    protocol = load_protocol(name, protocols_dir(cfg))
    return {"dataset": dataset_settings(cfg), "protocol": name,
            "recipe": student_recipe_settings(cell_recipe(protocol, ipc), ev),
            "keep_topk": ev["keep_topk"], "processes": ev["processes"], "gpus_per_job": int(cfg["gpus_per_job"]),
            "teacher": protocol["teachers"] or cfg["base"]["arch"], "method": str(wildcards["method"]), "ipc": ipc,
            "seed": int(wildcards["seed"]),
            # a store of an older format is rebuilt, not refused by evaluate
            "label_store_format": STORE_FORMAT_VERSION}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    """runtime = 1.5 x one forward pass of every teacher over epochs x IPC x classes images
    (teddy.resources.compute_seconds) + 10 min."""
    data_shape = shape(settings, machine)
    images = trained_epochs(settings["recipe"]) * int(settings["ipc"]) * data_shape[0]
    teacher = settings["teacher"]
    archs = teacher["archs"] if isinstance(teacher, dict) else [teacher]
    seconds = sum(compute_seconds({"arch": arch}, data_shape, machine.gpus_per_job, forward=images) for arch in archs)
    out = request(0, seconds, attempt, machine.gpus_per_job, machine.student_workers)
    out["mem_mb"] = memory_mb(student_memory_mb(settings, machine), attempt)
    return out


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """inputs.distilled (the set's meta.json), inputs.teacher (its model file(s)); outputs[0] the
    store's meta.json."""
    device = resolve_device(machine.device)
    train_set, meta = student_set(machine, inputs.distilled, device)
    info = dataset_info(dataset_cfg(settings, machine))
    teacher = load_teacher(inputs.teacher, settings["teacher"] if isinstance(settings["teacher"], dict) else None)
    recipe = student_recipe(settings, len(train_set), machine, info.num_classes)
    chunks = student_processes(settings, device) * int(settings["recipe"]["accumulate"])
    return write_label_store(outputs[0], train_set, teacher, recipe, settings["seed"], device, info,
                             set_hash=meta["set_hash"], keep_topk=settings["keep_topk"], chunks=chunks)
