"""The method registry (teddy.registry.Registry): each method module registers its
`distill(task)` with `@register_method(name, per_batch=..., defaults={...}, recipe_keys={...})`.

A method's entry carries everything the rest of the package needs to know about it: its recipe
defaults, the JSON-schema of its own recipe keys (the config loader validates each recipe against
the keys every method shares plus these), its own config-time checks, and its cost per iteration."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from teddy.registry import Registry


@dataclass(frozen=True)
class RecipeContext:
    """What a method's config-time check may need beyond its recipe (teddy.config builds it)."""
    key: str                        # where the recipe sits, e.g. "distill.methods.rded"
    image_size: int
    ipcs: tuple                     # the IPCs this recipe is run at
    pool_members: list | None       # the members of the recipe's pool (None: it names no pool)
    smallest_class: int | None      # training images of the smallest class after the split (None: unknown)
    where: str = ""                 # those images, in words, for the errors


@dataclass(frozen=True)
class Method:
    name: str
    distill: Callable          # distill(task: DistillTask) -> Distilled, given the full recipe
    per_batch: bool            # runs through base.run_batches batch by batch, so it shards
    defaults: dict = field(default_factory=dict)  # recipe values the method fills in
    # image passes of one iteration, work(full_recipe, ipc, classes), for costing its jobs;
    # None: one pass over the job's synthetic images
    work: Callable | None = None
    # JSON-schema properties of the recipe keys only this method reads (the shared ones are in
    # workflow/schemas/config.schema.yaml, distill.methods)
    recipe_keys: dict = field(default_factory=dict)
    # check(recipe, RecipeContext) -> None, raising TeddyError: what the schema cannot say
    check: Callable | None = None


METHODS = Registry("distillation method", "distill.methods.*.method")


def register_method(name: str, per_batch: bool = False, defaults: dict | None = None, work: Callable | None = None,
                    recipe_keys: dict | None = None, check: Callable | None = None):
    """Register `distill(task)` as method `name`. `per_batch`: it optimises (or selects) batch by
    batch through `base.run_batches` (honours `task.batches` and `task.on_batch`), so its set can
    be split into shards; otherwise it is set-level and runs as one shard. `defaults`: the recipe
    values it uses when the recipe leaves them out (`full_recipe`). `work`: the image passes of one
    iteration, for a method that reads more than its synthetic images (costing its jobs).
    `recipe_keys`: the schema of its own recipe keys; `check(recipe, context)`: its config checks."""
    def wrap(fn):
        METHODS.register(name, Method(name, fn, bool(per_batch), dict(defaults or {}), work,
                                      dict(recipe_keys or {}), check))
        return fn
    return wrap


def lookup(name: str) -> Method:
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
