"""Distillation methods behind one signature: `distill(task: DistillTask) -> Distilled`.

A new method is one new module here plus its name in METHODS.
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


__all__ = ["METHODS", "get_method", "DistillTask", "Distilled"]
