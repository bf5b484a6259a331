"""The shared harness: the task description, real-image selection, and the synthetic-image
optimisation loop every optimisation-based method runs (Adam on normalised pixels, cosine
schedule, augmentation each step, pixel clipping, NaN guard, checkpoint/resume)."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from teddy.data import DatasetInfo, apply_augment, class_indices, pixel_bounds, sample_augment_params, stack_items
from teddy.errors import TeddyError
from teddy.pool import WeakPool
from teddy.train import autocast_for, load_checkpoint, rng_state, save_checkpoint, set_rng_state


@dataclass
class DistillTask:
    real: object                 # the real training set (TensorImageDataset or FolderSubset)
    info: DatasetInfo
    pool: WeakPool | None        # models to match against (None for selection methods)
    ipc: int
    recipe: dict                 # the method's config entry
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint_path: str | os.PathLike | None = None


@dataclass
class Distilled:
    images: torch.Tensor         # N x C x H x W, normalised
    labels: torch.Tensor         # N
    log: dict


def real_indices_per_class(task: DistillTask) -> list[torch.Tensor]:
    """Indices of the real images of each class, checked to hold at least `ipc` each."""
    if task.ipc < 1:
        raise TeddyError(f"IPC must be >= 1, got {task.ipc} (config key distill.ipc)")
    per_class = class_indices(task.real.targets, task.info.num_classes)
    for c, idx in enumerate(per_class):
        if len(idx) < task.ipc:
            raise TeddyError(f"class {c} has {len(idx)} real images, fewer than IPC {task.ipc}")
    return per_class


def select_real(task: DistillTask, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random real images of every class, class-major order."""
    chosen = [idx[torch.randperm(len(idx), generator=generator)[: task.ipc]] for idx in real_indices_per_class(task)]
    return stack_items(task.real, torch.cat(chosen))


def initial_images(task: DistillTask, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    init = task.recipe.get("init", "real")
    images, labels = select_real(task, generator)
    if init == "noise":
        images = torch.randn(images.shape, generator=generator)
    elif init != "real":
        raise TeddyError(f"unknown init '{init}' (recipe key init: real or noise)")
    return images, labels


LossFn = Callable[[torch.nn.Module | None, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict]]


def optimise_synthetic(task: DistillTask, images: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn,
                       generator: torch.Generator, desc: str) -> Distilled:
    """Minimise `loss_fn(model, augmented_batch, batch_labels, iteration)` over the synthetic
    pixels. `model` is drawn from the pool each iteration (None when the task has no pool)."""
    r, device = task.recipe, task.device
    iterations, batch_size = int(r.get("iterations", 1000)), int(r.get("batch_size", 100))
    if iterations < 1:
        raise TeddyError(f"iterations must be >= 1, got {iterations}")
    syn = images.clone().to(device).requires_grad_(True)
    labels = labels.to(device)
    optimizer = torch.optim.Adam([syn], lr=float(r.get("lr", 0.1)), betas=tuple(r.get("betas", (0.5, 0.9))))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / iterations)))
    lo, hi = pixel_bounds(task.info, device)
    aug_cfg = r.get("augment") or {}
    log_every = int(r.get("log_every", max(1, iterations // 20)))
    ckpt_every = int(r.get("checkpoint_every", max(1, iterations // 10)))
    amp = bool(r.get("amp", False))  # bf16 autocast of the forward pass, CUDA only
    ckpt = Path(task.checkpoint_path) if task.checkpoint_path else None
    history, start, elapsed = [], 0, 0.0
    # a checkpoint only resumes the same run: same recipe, IPC, seed and image count
    settings = {"recipe": dict(r), "ipc": int(task.ipc), "seed": int(task.seed), "images": int(syn.shape[0])}

    state = load_checkpoint(ckpt, "distillation checkpoint", settings) if ckpt is not None else None
    if state is not None:
        with torch.no_grad():
            syn.copy_(state["images"].to(device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        set_rng_state(state)
        history, start, elapsed = state["history"], state["iteration"], state["elapsed"]
        print(f"resuming {desc} from {ckpt} at iteration {start}/{iterations}", file=sys.stderr)

    t0 = time.perf_counter()
    bar = tqdm(range(start, iterations), desc=desc, file=sys.stderr, mininterval=5, disable=False,
               initial=start, total=iterations)
    for it in bar:
        n = syn.shape[0]
        idx = torch.randperm(n, generator=generator)[:batch_size] if n > batch_size else torch.arange(n)
        x = syn[idx.to(device)]
        if aug_cfg:
            x = apply_augment(x, sample_augment_params(x.shape[0], task.info.image_size, aug_cfg, generator))
        model = task.pool.sample(it, generator) if task.pool is not None else None
        with autocast_for(device, amp):
            loss, parts = loss_fn(model, x, labels[idx.to(device)], it)
        if not torch.isfinite(loss):
            raise TeddyError(f"{desc}: non-finite loss at iteration {it + 1}; "
                             f"last good checkpoint kept at {ckpt}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            syn.copy_(torch.maximum(torch.minimum(syn, hi), lo))
        if (it + 1) % log_every == 0 or it == 0:  # the same log whether or not the run was resumed
            history.append({"iteration": it + 1, "loss": loss.item(), **parts})
            bar.set_postfix(loss=round(loss.item(), 4))
        if ckpt is not None and (it + 1) % ckpt_every == 0 and it + 1 < iterations:
            save_checkpoint(ckpt, {"images": syn.detach().cpu(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                                   **rng_state(), "history": history, "iteration": it + 1,
                                   "elapsed": elapsed + time.perf_counter() - t0, "settings": settings})
    seconds = elapsed + time.perf_counter() - t0
    return Distilled(syn.detach().cpu(), labels.cpu(),
                     {"history": history, "iterations": iterations, "optimise_seconds": seconds})


def single_pool_model(task: DistillTask, method: str) -> torch.nn.Module:
    """The one strong model of a `single` pool (sre2l and herding work against the base model)."""
    members = getattr(task.pool, "members", None)
    if not members or len(members) != 1:
        raise TeddyError(f"{method} works against the base model alone: its recipe key pool must name a pool "
                         f"with generator: single (got {len(members) if members else 'no'} stored members)")
    return members[0].to(task.device).eval()
