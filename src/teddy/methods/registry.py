"""The method registry (like `teddy.models`' model registry): each method module registers its
`distill(task)` with `@register_method(name, per_batch=..., defaults={...})`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from teddy.errors import TeddyError


@dataclass(frozen=True)
class Method:
    name: str
    distill: Callable          # distill(task: DistillTask) -> Distilled, given the full recipe
    per_batch: bool            # runs through base.run_batches batch by batch, so it shards
    defaults: dict = field(default_factory=dict)  # recipe values the method fills in
    # image passes of one iteration, work(full_recipe, ipc, classes), for costing its jobs;
    # None: one pass over the job's synthetic images
    work: Callable | None = None


# method name -> Method; `name in METHODS` and `sorted(METHODS)` are the known names
METHODS: dict[str, Method] = {}


def register_method(name: str, per_batch: bool = False, defaults: dict | None = None, work: Callable | None = None):
    """Register `distill(task)` as method `name`. `per_batch`: it optimises (or selects) batch by
    batch through `base.run_batches` (honours `task.batches` and `task.on_batch`), so its set can
    be split into shards; otherwise it is set-level and runs as one shard. `defaults`: the recipe
    values it uses when the recipe leaves them out (`full_recipe`). `work`: the image passes of one
    iteration, for a method that reads more than its synthetic images (costing its jobs)."""
    def wrap(fn):
        if name in METHODS:
            raise ValueError(f"distillation method '{name}' registered twice")
        METHODS[name] = Method(name, fn, bool(per_batch), dict(defaults or {}), work)
        return fn
    return wrap


def lookup(name: str) -> Method:
    if name not in METHODS:
        raise TeddyError(f"unknown distillation method '{name}' (config key distill.methods.*.method); "
                         f"known: {sorted(METHODS)}")
    return METHODS[name]


def full_recipe(recipe: dict, method: str | None = None) -> dict:
    """The recipe with its method's defaults filled in (the method is `recipe["method"]` unless
    named). The one place recipe defaults are merged: the methods receive this (`get_method`),
    and the batch plan and resources read it."""
    return {**lookup(method if method is not None else recipe["method"]).defaults, **recipe}


def get_method(name: str) -> Callable:
    """`distill(task)` of method `name`, called with `task.recipe` completed by `full_recipe`."""
    method = lookup(name)

    def distill(task):
        return method.distill(replace(task, recipe=full_recipe(task.recipe, name)))
    distill.__name__ = distill.__qualname__ = f"distill_{name}"
    distill.__doc__ = method.distill.__doc__
    return distill


def per_batch(name: str) -> bool:
    """Whether the method optimises (or selects) batch by batch, and so can be sharded."""
    return lookup(name).per_batch
