"""Distillation methods behind one signature: `distill(task: DistillTask) -> Distilled`.

A new method is one new module here plus its name in METHODS. A module that sets
`PER_BATCH = True` runs through `base.run_batches` (honours `task.batches` and
`task.on_batch`), so its set can be split into shards; any other method is set-level: it
returns the whole set at once and runs as one shard. `DEFAULTS` (optional) are recipe values
the method fills in.
"""

from __future__ import annotations

import importlib

from teddy.errors import TeddyError
from teddy.methods.base import Distilled, DistillTask

# method name -> module implementing `distill(task)`
METHODS = {
    "teddy": "teddy.methods.teddy",
    "random": "teddy.methods.random_subset",
    "sre2l": "teddy.methods.sre2l",
    "bilevel": "teddy.methods.bilevel",
    "herding": "teddy.methods.herding",
    "import": "teddy.methods.imported",
    "rded": "teddy.methods.rded",
}


def get_method(name: str):
    if name not in METHODS:
        raise TeddyError(f"unknown distillation method '{name}' (config key distill.methods.*.method); "
                         f"known: {sorted(METHODS)}")
    return importlib.import_module(METHODS[name]).distill


def per_batch(name: str) -> bool:
    """Whether the method optimises (or selects) batch by batch, and so can be sharded."""
    get_method(name)
    return bool(getattr(importlib.import_module(METHODS[name]), "PER_BATCH", False))


def full_recipe(recipe: dict) -> dict:
    """The recipe with the method's own defaults filled in."""
    get_method(recipe["method"])
    return {**getattr(importlib.import_module(METHODS[recipe["method"]]), "DEFAULTS", {}), **recipe}


__all__ = ["METHODS", "get_method", "DistillTask", "Distilled"]
