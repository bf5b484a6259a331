"""What a training recipe names, made into torch objects: the device, bf16 autocast, the
optimiser, the learning-rate schedule and how many epochs it runs, and torch.compile. The training
loop (teddy.train) and the label store's teacher pass (teddy.label_store) both read recipes
through these, so they sit below both."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn

from teddy.errors import TeddyError


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; a no-op on CPU so CPU runs stay exact."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(params, recipe: dict) -> torch.optim.Optimizer:
    """The recipe's optimiser; `weight_decay_skip_1d` exempts biases and norm weights (every
    parameter of one dimension or none) from weight decay, as SRe2L's student does."""
    name = recipe.get("optimizer", "sgd")
    lr, wd = float(recipe["lr"]), float(recipe.get("weight_decay", 0.0))
    params = list(params)
    if recipe.get("weight_decay_skip_1d") and params and isinstance(params[0], torch.Tensor):
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(recipe.get("momentum", 0.9)), weight_decay=wd,
                               nesterov=bool(recipe.get("nesterov", False)))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(recipe.get("betas", (0.9, 0.999))), weight_decay=wd)
    raise TeddyError(f"unknown optimizer '{name}' (recipe key optimizer)")


SCHEDULES = ("cosine", "half_cosine", "linear", "step", "constant")


def trained_epochs(recipe: dict) -> int:
    """Epochs a run trains: `epochs` (the schedule's length), or fewer with `stop_after_epoch`,
    which keeps the full-length schedule and stops early (a prior pool's snapshots)."""
    epochs = int(recipe["epochs"])
    stop = recipe.get("stop_after_epoch")
    if stop is None:
        return epochs
    if not 1 <= int(stop) <= epochs:
        raise TeddyError(f"recipe key stop_after_epoch={stop} must lie in 1..epochs ({epochs})")
    return int(stop)


def lr_factor(recipe: dict, steps_per_epoch: int):
    """The lr multiplier as a function of the optimiser step, from the recipe's `schedule`:
    cosine (to 0, default), half_cosine (the first half of a cosine: ends at 0.5 x lr, RDED),
    linear (to `final_lr_factor` x lr, default 0; EDC's released script ends at 0.5), step (x
    `gamma` after each epoch in `milestones`, DC), constant; after `warmup_epochs` of linear
    warm-up (from `warmup_start_factor` x lr when given). `schedule_unit: epoch` moves the factor
    once per epoch, as SRe2L's and RDED's schedulers do; `step` (default) every step."""
    kind = recipe.get("schedule", "cosine")
    if kind not in SCHEDULES:
        raise TeddyError(f"unknown schedule '{kind}' (recipe key schedule; known: {', '.join(SCHEDULES)})")
    per_epoch = recipe.get("schedule_unit", "step") == "epoch"
    unit = steps_per_epoch if per_epoch else 1
    total = int(recipe["epochs"]) * steps_per_epoch // unit
    warmup = int(recipe.get("warmup_epochs", 0)) * steps_per_epoch // unit
    start = recipe.get("warmup_start_factor")
    milestones = [int(m) * steps_per_epoch for m in recipe.get("milestones") or []]
    gamma = float(recipe.get("gamma", 0.1))
    final = float(recipe.get("final_lr_factor", 0.0))

    def factor(step):
        if kind == "step":  # milestones count optimiser steps, whatever the unit
            return gamma ** sum(step >= m for m in milestones)
        position = step // unit
        if position < warmup:
            if start is None:
                return (position + 1) / warmup
            return float(start) + (1.0 - float(start)) * position / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (position - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - (1.0 - final) * progress
        return 0.5 * (1.0 + math.cos(math.pi * progress * (0.5 if kind == "half_cosine" else 1.0)))
    return factor


def lr_schedule(optimizer, recipe: dict, steps_per_epoch: int):
    """A LambdaLR stepped once per optimiser step (teddy.recipes.lr_factor)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(recipe, steps_per_epoch))


def reset_momentum_at(recipe: dict) -> set[int]:
    """Epochs after which the optimiser state is dropped: DC builds a fresh SGD at each lr step."""
    return {int(m) for m in recipe.get("milestones") or []} if recipe.get("reset_momentum") else set()


def compiled(model: nn.Module, recipe: dict, device: torch.device):
    """`torch.compile(model)` when the recipe sets `compile: true` on CUDA (a speed knob, off by
    default and not yet measured on a GPU: docs/gpu_loops.md); the model itself otherwise."""
    if recipe.get("compile") and device.type == "cuda":
        return torch.compile(model)
    return model
