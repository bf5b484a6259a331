"""Distillation methods behind one signature: `distill(task: DistillTask) -> Distilled`.

A new method is one new module here, whose `distill` is decorated with
`@register_method(name, per_batch=..., defaults={...})` (teddy.methods.registry), plus its
import below. A per-batch method runs through `base.run_batches` (honours `task.batches` and
`task.on_batch`), so its set can be split into shards; any other method is set-level: it
returns the whole set at once and runs as one shard. `full_recipe` fills in a method's
defaults; `get_method(name)(task)` runs it on the full recipe.
"""

from __future__ import annotations

from teddy.methods.base import Distilled, DistillTask
from teddy.methods.registry import METHODS, Method, full_recipe, get_method, per_batch, register_method

# importing a method module registers it
from teddy.methods import teddy, random_subset, sre2l, bilevel, herding, imported, rded, dc  # noqa: E402,F401  isort: skip

__all__ = ["METHODS", "Method", "register_method", "get_method", "per_batch", "full_recipe", "DistillTask",
           "Distilled"]
