"""Rule evaluate: a fresh student trained on the distilled set under one evaluation protocol
(teddy.protocols: the student variant, its recipe at this IPC, hard labels or KD from the base
model, whose outputs are computed online or read from rule relabel's store), tested on the real
test set. With more than one process (evaluate.processes, else
gpus_per_job on CUDA) the stage runs itself under torchrun and rank 0 writes the result; the
process count is a setting (CutMix partners and BatchNorm statistics are per process)."""

from __future__ import annotations

from teddy.errors import TeddyError
from teddy.job_files import first
from teddy.machine import Machine, dataset_settings
from teddy.protocols import cell_recipe, evaluates, load_protocol, protocols_dir, student_spec
from teddy.recipes import trained_epochs
from teddy.resources import compute_seconds, memory_mb, request, shape, test_images
from teddy.student_run import labels_of, student_memory_mb, student_recipe_settings, teachers_setting, train_student


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
    """runtime = 1.5 x (epochs x IPC x classes training steps + a test pass) of the student
    (teddy.resources.compute_seconds) + 10 min; memory as relabel's."""
    data_shape = shape(settings, machine)
    trained = trained_epochs(settings["recipe"]) * int(settings["ipc"]) * data_shape[0]
    seconds = compute_seconds(settings["model"], data_shape, machine.gpus_per_job, trained,
                              test_images(settings, machine))
    out = request(0, seconds, attempt, machine.gpus_per_job, machine.student_workers)
    out["mem_mb"] = memory_mb(student_memory_mb(settings, machine), attempt)
    return out


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """inputs.distilled (the set's meta.json), inputs.teacher (online KD), inputs.soft_labels
    (stored KD); outputs[0] the result JSON, the checkpoint beside it."""
    return train_student(settings, str(inputs.distilled), [str(p) for p in getattr(inputs, "teacher", None) or []],
                         first(getattr(inputs, "soft_labels", None)), str(outputs[0]), machine)


