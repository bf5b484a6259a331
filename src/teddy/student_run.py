"""A student run, as the stages that train students share it (relabel, evaluate, ceiling): the
cell's recipe for a set (its batch, the speed keys), how the student is taught (hard labels,
online KD or a label store) and by which teachers, the distilled set as the student reads it, the
processes it runs in, and its memory."""

from __future__ import annotations

import time

import torch

from teddy.datasets import dataset_info, load_split
from teddy.distributed import barrier, in_launched_process, init_from_env, is_main, launch
from teddy.efficiency import peak_gpu_memory_mb
from teddy.errors import TeddyError
from teddy.io import load_json, save_json
from teddy.label_store import LabelStore
from teddy.machine import Machine, dataset_cfg
from teddy.models import model_from_spec
from teddy.protocols import cell_recipe, class_batch_size, config_protocol
from teddy.machine import resolve_device
from teddy.resources import shape
from teddy.resume import remove_checkpoint
from teddy.student_data import load_student_set
from teddy.teachers import load_teacher
from teddy.train import evaluate_accuracy, fit, targets_for

# student recipe keys that set how fast a run is, not its numbers: they reach the job through the
# Machine (student_compile), so changing them reruns nothing
STUDENT_SPEED_KEYS = ("compile",)


def student_recipe_settings(recipe: dict, evaluate: dict | None = None) -> dict:
    """A student recipe as a stage records it: without the speed keys, with the config's
    evaluate.amp / channels_last added where set (they act on CUDA and change the numbers a little)."""
    out = {k: v for k, v in recipe.items() if k not in STUDENT_SPEED_KEYS}
    for key in ("amp", "channels_last"):
        if (evaluate or {}).get(key):
            out[key] = True
    return out


def student_processes(settings: dict, device: torch.device) -> int:
    """How many processes a student run uses: evaluate.processes, else gpus_per_job on CUDA, else
    1 (both are in the settings: CutMix partners and BatchNorm statistics are per process).
    Asking for more GPUs than are visible is an error."""
    gpus = int(settings["gpus_per_job"])
    processes = int(settings["processes"] or (gpus if device.type == "cuda" else 1) or 1)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise TeddyError(f"{processes} processes asked (gpus_per_job / evaluate.processes) but "
                         f"{torch.cuda.device_count()} GPUs are visible")
    return max(1, processes)


def student_recipe(settings: dict, num_images: int, machine: Machine, num_classes: int | None = None) -> dict:
    """The cell's recipe with its batch for this set (doubled on many classes where the protocol
    says so, capped at the set's size) and the Machine's speed keys."""
    recipe = {**settings["recipe"], "compile": machine.student_compile}
    recipe["batch_size"] = class_batch_size(recipe, num_images, num_classes or 0)
    recipe.pop("batch_size_doubled_from_classes", None)
    return recipe


def config_student_recipe(cfg: dict, num_images: int, protocol: str | None = None, ipc: int = 1) -> dict:
    """A protocol's recipe at `ipc` (default: the config's first evaluate.protocols entry) with the
    batch for a set of `num_images`, as relabel and evaluate use it (benchmarks)."""
    recipe = cell_recipe(config_protocol(cfg, protocol), ipc)
    return student_recipe({"recipe": recipe}, num_images, Machine(student_compile=bool(cfg["evaluate"].get("compile"))))


def student_set(machine: Machine, distilled_meta, device):
    """The distilled set, placed on the device, in host memory or streamed (student_data)."""
    return load_student_set(distilled_meta, machine.in_memory_max_mb, machine.student_workers, device=device,
                            device_memory_fraction=machine.device_memory_fraction)


def student_memory_mb(settings: dict, machine: Machine) -> float:
    """3 GB + the set in memory (when below evaluate.in_memory_max_mb, else 0) + per worker
    (0.5 GB + 2 prefetched micro-batches) + one stored-label epoch file."""
    classes, channels, size = shape(settings, machine)
    images = int(settings["ipc"]) * classes
    set_mb = images * channels * size ** 2 * 4 / 2**20
    recipe = settings["recipe"]
    in_memory = set_mb if set_mb <= machine.in_memory_max_mb else 0.0
    micro = int(recipe["batch_size"]) / max(1, int(recipe["accumulate"]))
    batch_mb = micro * channels * size ** 2 * 4 / 2**20
    k = int(settings["keep_topk"] or classes)
    epoch_labels_mb = images * (4 * k + 25) / 2**20
    return 3000 + in_memory + machine.student_workers * (500 + 2 * batch_mb) + 4 * batch_mb + epoch_labels_mb


def labels_of(protocol: dict, teacher_outputs: str) -> str:
    """How a cell's student is taught: hard, online_kd (the teacher in the loop) or stored."""
    if protocol["labels"] == "hard":
        return "hard"
    return "stored" if teacher_outputs == "stored" else "online_kd"


def teachers_setting(protocol: dict) -> dict:
    """A protocol's teacher ensemble, recorded only where it has one (the base model needs no entry)."""
    return {"teachers": protocol["teachers"]} if protocol.get("teachers") else {}


def train_student(settings: dict, distilled_meta: str, teacher_paths: list, label_store_meta, out_json: str,
            machine: Machine) -> dict:
    """Train and test one student of a distilled set (rule evaluate's job, on plain paths): what
    each torchrun process calls when the run spans several processes. Writes `out_json` (main
    process) and returns the result."""
    method_name, ipc, arch, seed, labels, protocol = (settings[k] for k in ("method", "ipc", "arch", "seed", "labels",
                                                                           "protocol"))
    checkpoint = out_json.removesuffix(".json") + ".ckpt"
    device = resolve_device(machine.device)
    processes = student_processes(settings, device)
    if processes > 1 and not in_launched_process():
        launch(processes, "teddy.student_run:train_student", settings, distilled_meta, teacher_paths, label_store_meta,
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
    model = model_from_spec(settings["model"], info, seed=seed)
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
