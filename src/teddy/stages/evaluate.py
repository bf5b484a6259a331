"""Rule evaluate: a fresh student trained on the distilled set under one evaluation protocol
(teddy.protocols: the student variant, its recipe at this IPC, hard labels or KD from the base
model, whose outputs are computed online or read from rule relabel's store), tested on the real
test set. With more than one process (evaluate.processes, else
gpus_per_job on CUDA) the stage runs itself under torchrun and rank 0 writes the result; the
process count is a setting (CutMix partners and BatchNorm statistics are per process)."""

from __future__ import annotations

import time

from teddy.data import dataset_info, load_split
from teddy.distributed import barrier, in_launched_process, init_from_env, is_main, launch
from teddy.efficiency import peak_gpu_memory_mb
from teddy.errors import TeddyError
from teddy.io import load_json, save_json
from teddy.label_store import LabelStore
from teddy.protocols import cell_recipe, evaluates, load_protocol, protocols_dir, student_spec
from teddy.stages.common import (Machine, build, dataset_cfg, dataset_settings, first, images_per_s, memory_mb,
                                 request, shape, student_processes, student_recipe_settings, test_images)
from teddy.stages.relabel import student_memory_mb, student_recipe, student_set
from teddy.resume import remove_checkpoint
from teddy.teachers import load_teacher
from teddy.train import evaluate_accuracy, fit, resolve_device, targets_for, trained_epochs


def labels_of(protocol: dict, teacher_outputs: str) -> str:
    """How a cell's student is taught: hard, online_kd (the teacher in the loop) or stored."""
    if protocol["labels"] == "hard":
        return "hard"
    return "stored" if teacher_outputs == "stored" else "online_kd"


def teachers_setting(protocol: dict) -> dict:
    """A protocol's teacher ensemble, recorded only where it has one (the base model needs no entry)."""
    return {"teachers": protocol["teachers"]} if protocol.get("teachers") else {}


def settings(cfg: dict, wildcards: dict) -> dict:
    ev = cfg["evaluate"]
    arch, name, ipc = str(wildcards["arch"]), str(wildcards["protocol"]), int(wildcards["ipc"])
    protocol = load_protocol(name, protocols_dir(cfg))
    if not evaluates(protocol, arch):
        raise TeddyError(f"protocol '{name}' does not evaluate student '{arch}' (it evaluates "
                         f"{sorted(protocol['students'])})")
    return {"dataset": dataset_settings(cfg), "protocol": name,
            "recipe": student_recipe_settings(cell_recipe(protocol, ipc), ev), "keep_topk": ev["keep_topk"],
            "processes": ev["processes"], "gpus_per_job": int(cfg["gpus_per_job"]),
            "model": student_spec(cfg, protocol, arch), "method": str(wildcards["method"]), "ipc": ipc,
            "arch": arch, "labels": labels_of(protocol, ev["teacher_outputs"]), "seed": int(wildcards["seed"]),
            **teachers_setting(protocol)}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    """runtime = 1.5 x (epochs x IPC x classes + test images) / images/s of the student + 10 min;
    memory as relabel's."""
    classes, _, size = shape(settings, machine)
    images = trained_epochs(settings["recipe"]) * int(settings["ipc"]) * classes + test_images(settings, machine)
    seconds = images / images_per_s(settings["arch"], size, machine.gpus_per_job)
    out = request(0, seconds, attempt, machine.gpus_per_job, machine.student_workers)
    out["mem_mb"] = memory_mb(student_memory_mb(settings, machine), attempt)
    return out


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """inputs.distilled (the set's meta.json), inputs.teacher (online KD), inputs.soft_labels
    (stored KD); outputs[0] the result JSON, the checkpoint beside it."""
    return student(settings, str(inputs.distilled), [str(p) for p in getattr(inputs, "teacher", None) or []],
                   first(getattr(inputs, "soft_labels", None)), str(outputs[0]), machine)


def student(settings: dict, distilled_meta: str, teacher_paths: list, label_store_meta, out_json: str,
            machine: Machine) -> dict:
    """run() on plain paths: what each torchrun process calls."""
    method_name, ipc, arch, seed, labels, protocol = (settings[k] for k in ("method", "ipc", "arch", "seed", "labels",
                                                                           "protocol"))
    checkpoint = out_json.removesuffix(".json") + ".ckpt"
    device = resolve_device(machine.device)
    processes = student_processes(settings, device)
    if processes > 1 and not in_launched_process():
        launch(processes, "teddy.stages.evaluate:student", settings, distilled_meta, teacher_paths, label_store_meta,
               out_json, machine)
        return load_json(out_json)
    device = init_from_env(device)
    info = dataset_info(dataset_cfg(settings, machine))
    train_set, meta = student_set(machine, distilled_meta, device)
    teacher = store = None
    recipe = student_recipe(settings, len(train_set), machine, info.num_classes)
    if labels == "online_kd":
        teacher = load_teacher(teacher_paths, settings.get("teachers"))
    elif labels == "stored":
        if not label_store_meta:
            raise TeddyError("evaluate.teacher_outputs is 'stored' but no soft-label store was given (rule relabel)")
        store = LabelStore(label_store_meta, set_hash=meta["set_hash"], recipe=recipe, seed=seed,
                           chunks=processes * int(recipe["accumulate"]), num_images=len(train_set),
                           num_classes=info.num_classes, keep_topk=settings["keep_topk"])
    elif labels != "hard":
        raise TeddyError(f"unknown label source '{labels}' (online_kd, stored or hard)")
    model = build(settings["model"], info, seed=seed)
    t0 = time.perf_counter()
    fit(model, train_set, recipe, device, seed=seed, targets=targets_for(teacher, store), checkpoint_path=checkpoint,
        desc=f"student {arch} {method_name} ipc{ipc} {protocol} seed{seed}", info=info)
    result = {"method": method_name, "ipc": ipc, "arch": arch, "seed": seed, "protocol": protocol, "labels": labels,
              "processes": processes, "train_seconds": time.perf_counter() - t0, "peak_gpu_mb": peak_gpu_memory_mb()}
    if is_main():
        result["test_accuracy"] = evaluate_accuracy(model, load_split(dataset_cfg(settings, machine), "test"), device)
        save_json(result, out_json)
        remove_checkpoint(checkpoint)
    barrier()
    return result
