"""One module per workflow rule (teddy.stages.<rule>), each defining

    settings(cfg, wildcards)                 the one dict its job receives and records
    resources(settings, attempt, machine)    mem_mb, runtime (minutes), gpu, workers
    run(settings, inputs, outputs, machine)  the job, reading nothing but these

and stages/common.py what they share (the Machine, dataset settings, throughput tables). Adding
a rule means one module here and one rule in workflow/rules/."""

from __future__ import annotations

import importlib

from teddy.stages.common import Files, Machine, machine_from_config

STAGES = ("normalisation", "train_base", "train_prior", "pool_member", "pool_manifest", "distill", "gather",
          "relabel", "evaluate", "ceiling", "aggregate")


def stage(name: str):
    """The module of one rule's stage."""
    if name not in STAGES:
        raise ValueError(f"no stage '{name}' (known: {', '.join(STAGES)})")
    return importlib.import_module(f"teddy.stages.{name}")


def run_stage(name: str, cfg: dict, wildcards: dict, inputs: Files, outputs: Files, machine: Machine | None = None):
    """What a rule's job does, outside Snakemake (tests): settings from the config with the schema's
    defaults filled in (a partial config will do; teddy.config.fill_defaults), then run; the
    Machine comes from the same config unless given."""
    import copy

    from teddy.config import fill_defaults

    mod = stage(name)
    cfg = fill_defaults(copy.deepcopy(cfg))
    return mod.run(mod.settings(cfg, wildcards), inputs, outputs, machine or machine_from_config(cfg))


def build(cfg: dict, arch: str, seed: int | None = None):
    """A fresh `arch` model for a loaded config's dataset (tests and benchmarks)."""
    from teddy.data import dataset_info
    from teddy.stages.common import build as build_spec, model_spec

    return build_spec(model_spec(cfg, arch), dataset_info(cfg["dataset"]), seed)


def student_recipe(cfg: dict, num_images: int, protocol: str | None = None, ipc: int = 1) -> dict:
    """A protocol's recipe at `ipc` (default: the config's first evaluate.protocols entry) with
    the batch for a set of `num_images`, as relabel and evaluate use it (benchmarks)."""
    from teddy.protocols import cell_recipe, config_protocol
    from teddy.stages.relabel import student_recipe as for_set

    recipe = cell_recipe(config_protocol(cfg, protocol), ipc)
    return for_set({"recipe": recipe}, num_images, Machine(student_compile=bool(cfg["evaluate"].get("compile"))))


__all__ = ["STAGES", "Files", "Machine", "build", "machine_from_config", "run_stage", "stage", "student_recipe"]
