"""Distillation methods behind one signature: `distill(task: DistillTask) -> Distilled`.

A new method is one new module in this package (found and imported below, which registers it)
or a file of your own named in the config's `plugins` list: its `distill` is decorated with
`@register_method(name, per_batch=..., defaults={...}, recipe_keys={...}, check=...)`
(teddy.methods.registry). A per-batch method runs through `base.run_batches` (honours
`task.batches` and `task.on_batch`), so its set can be split into shards; any other method is
set-level: it returns the whole set at once and runs as one shard. `full_recipe` fills in a
method's defaults; `get_method(name)(task)` runs it on the full recipe.
"""

from __future__ import annotations

import importlib
import pkgutil

from teddy.methods.base import Distilled, DistillTask, SyntheticBatch
from teddy.methods.registry import (METHODS, Method, RecipeContext, full_recipe, get_method, lookup, per_batch,
                                    register_method)

# importing a method module registers it: every module of this package but the harness
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "Method", "RecipeContext", "register_method", "get_method", "lookup", "per_batch", "full_recipe",
           "DistillTask", "Distilled", "SyntheticBatch"]
