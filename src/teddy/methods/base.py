"""The shared harness: the task description, real-image selection, and the synthetic-image
optimisation loop every optimisation-based method runs (Adam on normalised pixels, cosine
schedule, augmentation each step, pixel clipping, NaN guard, checkpoint/resume).

Per-batch optimisation (`run_batches`): the set is cut into synthetic batches
(`teddy.shards.batch_plan`); each batch gets `iterations` steps with a fresh Adam and its own
cosine schedule, a generator (and global torch seed) from (seed, method name, IPC, batch
index), then is handed to `task.on_batch` (the stage writes its PNGs) and freed, so peak
memory is that of one batch whatever the IPC. `task.batches` restricts the run to some batch
indices (a shard, less the batches already written)."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from teddy.augment import apply_augment, pixel_bounds, sample_augment_params
from teddy.data import DatasetInfo, class_indices, stack_items
from teddy.errors import TeddyError
from teddy.pool import WeakPool
from teddy.shards import batch_plan, batch_seed
from teddy.resume import Resumable
from teddy.train import autocast_for


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
    name: str = ""               # the method's name in the config (seeds the batches); default recipe method
    batches: Sequence[int] | None = None  # batch indices to run (None: every batch of the set)
    on_batch: Callable[["SyntheticBatch"], None] | None = None  # None: keep the batches and return them

    @property
    def seed_name(self) -> str:
        return self.name or str(self.recipe.get("method", ""))


@dataclass
class Distilled:
    images: torch.Tensor         # N x C x H x W, normalised
    labels: torch.Tensor         # N
    log: dict
    index_in_class: torch.Tensor | None = None  # N; None: the order of the images within each class


@dataclass
class SyntheticBatch:
    index: int                   # batch index in the set's plan
    images: torch.Tensor         # n x C x H x W, normalised, on the CPU
    labels: torch.Tensor
    index_in_class: torch.Tensor
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


def chosen_real(task: DistillTask, generator: torch.Generator) -> list[torch.Tensor]:
    """Per class, the indices of `ipc` random real images (index j is image j of the class)."""
    return [idx[torch.randperm(len(idx), generator=generator)[: task.ipc]] for idx in real_indices_per_class(task)]


def select_real(task: DistillTask, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random real images of every class, class-major order."""
    return stack_items(task.real, torch.cat(chosen_real(task, generator)))


# what the harness uses when a recipe leaves a key out; the per-batch methods register these
# among their defaults (teddy.methods.registry), so `full_recipe` fills them in (plain JSON data)
HARNESS_DEFAULTS = {"iterations": 1000, "lr": 0.1, "betas": [0.5, 0.9], "batch_size": 100, "init": "real"}

LossFn = Callable[[torch.nn.Module | None, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict]]


def optimise_synthetic(task: DistillTask, images: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn,
                       generator: torch.Generator, desc: str, batch: int = 0) -> Distilled:
    """Minimise `loss_fn(model, augmented_images, labels, iteration)` over the pixels of one
    synthetic batch (all of `images`, every step), with a fresh Adam and cosine schedule.
    `model` is drawn from the pool each iteration (None when the task has no pool)."""
    r, device = task.recipe, task.device
    iterations = int(r.get("iterations", HARNESS_DEFAULTS["iterations"]))
    if iterations < 1:
        raise TeddyError(f"iterations must be >= 1, got {iterations}")
    syn = images.clone().to(device)
    if r.get("channels_last") and device.type == "cuda":  # faster convolutions under bf16 autocast
        syn = syn.contiguous(memory_format=torch.channels_last)
        for member in getattr(task.pool, "members", []):
            member.to(memory_format=torch.channels_last)
    syn.requires_grad_(True)
    labels = labels.to(device)
    optimizer = torch.optim.Adam([syn], lr=float(r.get("lr", HARNESS_DEFAULTS["lr"])),
                                 betas=tuple(r.get("betas", HARNESS_DEFAULTS["betas"])))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / iterations)))
    lo, hi = pixel_bounds(task.info, device)
    aug_cfg = r.get("augment") or {}
    log_every = int(r.get("log_every", max(1, iterations // 20)))
    ckpt_every = int(r.get("checkpoint_every", max(1, iterations // 10)))
    amp = bool(r.get("amp", False))  # bf16 autocast of the forward pass, CUDA only
    history, start, elapsed = [], 0, 0.0
    # a checkpoint only resumes the same run: same recipe, IPC, seed, batch and image count
    settings = {"recipe": dict(r), "ipc": int(task.ipc), "seed": int(task.seed), "images": int(syn.shape[0]),
                "name": task.seed_name, "batch": int(batch)}
    checkpoint = Resumable(task.checkpoint_path, settings, "distillation checkpoint")
    state = checkpoint.load(optimizer, scheduler, generator)
    if state is not None:
        with torch.no_grad():
            syn.copy_(state["images"].to(device))
        history, start, elapsed = state["history"], state["iteration"], state["elapsed"]
        print(f"resuming {desc} from {checkpoint.path} at iteration {start}/{iterations}", file=sys.stderr)

    t0 = time.perf_counter()
    bar = tqdm(range(start, iterations), desc=desc, file=sys.stderr, mininterval=5, disable=False,
               initial=start, total=iterations)
    for it in bar:
        x = syn
        if aug_cfg:
            x = apply_augment(x, sample_augment_params(x.shape[0], task.info.image_size, aug_cfg, generator))
        model = task.pool.sample(it, generator) if task.pool is not None else None
        with autocast_for(device, amp):
            loss, parts = loss_fn(model, x, labels, it)
        checkpoint.check_finite(loss, desc, f"iteration {it + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            syn.copy_(torch.maximum(torch.minimum(syn, hi), lo))
        if (it + 1) % log_every == 0 or it == 0:  # the same log whether or not the run was resumed
            history.append({"iteration": it + 1, "loss": loss.item(), **parts})
            bar.set_postfix(loss=round(loss.item(), 4))
        if (it + 1) % ckpt_every == 0 and it + 1 < iterations:
            checkpoint.save(optimizer, scheduler, generator, history, images=syn.detach().cpu(), iteration=it + 1,
                            elapsed=elapsed + time.perf_counter() - t0)
    seconds = elapsed + time.perf_counter() - t0
    return Distilled(syn.detach().cpu(), labels.cpu(),
                     {"history": history, "iterations": iterations, "optimise_seconds": seconds})


def start_batch(task: DistillTask, b: int, labels: torch.Tensor, index_in_class: torch.Tensor,
                chosen: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Generator, int]:
    """Batch `b`'s starting images, its generator and seed (the global torch seed is set too):
    the `chosen` real images of its (class, index-in-class) slots, or noise when `chosen` is None."""
    seed = batch_seed(task.seed, task.seed_name, task.ipc, b)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # methods drawing from the global RNG (bilevel) follow the batch too
    if chosen is not None:
        images, _ = stack_items(task.real, torch.stack([chosen[c][j] for c, j in
                                                        zip(labels.tolist(), index_in_class.tolist())]))
    else:
        info = task.info
        images = torch.randn((len(labels), info.channels, info.image_size, info.image_size), generator=generator)
    return images, generator, seed


def run_batches(task: DistillTask, loss_fn: LossFn | None, desc: str) -> Distilled:
    """Every batch of `task.batches` (default: the whole plan): initialised (`init`: real images
    of the slots' classes, or noise), optimised on its own with `loss_fn` (None: kept as
    initialised, the random real subset), then passed to `task.on_batch` or kept and returned."""
    batch_size = int(task.recipe.get("batch_size", HARNESS_DEFAULTS["batch_size"]))
    plan = batch_plan(task.info.num_classes, task.ipc, batch_size)
    wanted = range(len(plan)) if task.batches is None else list(task.batches)
    for b in wanted:
        if not 0 <= int(b) < len(plan):
            raise TeddyError(f"batch {b} is beyond the set: {task.seed_name} at IPC {task.ipc} has {len(plan)} "
                             f"batches of at most {batch_size} images")
    init = task.recipe.get("init", HARNESS_DEFAULTS["init"])
    if init not in ("real", "noise"):
        raise TeddyError(f"unknown init '{init}' (recipe key init: real or noise)")
    # the real images are chosen for the whole set at once (seeded by the seed alone), so a
    # batch's images do not depend on the sharding, and IPC n's choice extends IPC m < n's
    chosen = chosen_real(task, torch.Generator().manual_seed(task.seed)) if init == "real" else None
    kept, logs = [], []
    for b in wanted:
        labels, index_in_class = plan[b]
        images, generator, seed = start_batch(task, b, labels, index_in_class, chosen)
        log = {"batch": int(b), "images": int(len(labels)), "seed": seed}
        if loss_fn is not None:
            result = optimise_synthetic(task, images, labels, loss_fn, generator,
                                        desc=f"{desc} batch {b + 1}/{len(plan)}", batch=int(b))
            images = result.images
            log.update(result.log)
        batch = SyntheticBatch(int(b), images, labels, index_in_class, log)
        logs.append(log)
        if task.on_batch is not None:
            task.on_batch(batch)  # written, then freed: nothing of it is kept here
        else:
            kept.append(batch)
        del batch, images
    if not kept:
        empty = torch.zeros(0, task.info.channels, task.info.image_size, task.info.image_size)
        return Distilled(empty, torch.zeros(0, dtype=torch.long), {"batches": logs}, torch.zeros(0, dtype=torch.long))
    return Distilled(torch.cat([k.images for k in kept]), torch.cat([k.labels for k in kept]), {"batches": logs},
                     torch.cat([k.index_in_class for k in kept]))


def single_pool_model(task: DistillTask, method: str) -> torch.nn.Module:
    """The one strong model of a `single` pool (sre2l and herding work against the base model)."""
    members = getattr(task.pool, "members", None)
    if not members or len(members) != 1:
        raise TeddyError(f"{method} works against the base model alone: its recipe key pool must name a pool "
                         f"with generator: single (got {len(members) if members else 'no'} stored members)")
    return members[0].to(task.device).eval()
