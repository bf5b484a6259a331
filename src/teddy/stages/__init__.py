"""One module per workflow rule (teddy.stages.<rule>), each defining

    settings(cfg, wildcards)                 the one dict its job receives and records (a Snakemake
                                             param, so a change reruns exactly its jobs)
    resources(settings, attempt, machine)    mem_mb, runtime (minutes), gpu, workers
    run(settings, inputs, outputs, machine)  the job, reading nothing but these

A stage stands on the domain modules below it (teddy.machine, teddy.resources, teddy.student_run,
teddy.pool, teddy.methods, ...) and never on another stage (docs/architecture.md; the suite's
import contract). Adding a rule means one module here and one rule in workflow/rules/."""

from __future__ import annotations

import copy
import importlib

from teddy.config import fill_defaults
from teddy.datasets import dataset_info
from teddy.job_files import Files
from teddy.machine import Machine, machine_from_config
from teddy.models import arch_spec, model_from_spec

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
    mod = stage(name)
    cfg = fill_defaults(copy.deepcopy(cfg))
    return mod.run(mod.settings(cfg, wildcards), inputs, outputs, machine or machine_from_config(cfg))


def build(cfg: dict, arch: str, seed: int | None = None):
    """A fresh `arch` model for a loaded config's dataset (tests and benchmarks)."""
    return model_from_spec(arch_spec(cfg, arch), dataset_info(cfg["dataset"]), seed)


__all__ = ["STAGES", "Files", "Machine", "build", "machine_from_config", "run_stage", "stage"]
