"""The shared harness: the task description, real-image selection, and the synthetic-image
optimisation loop every optimisation-based method runs (Adam on normalised pixels, cosine
schedule, augmentation each step, pixel clipping, NaN guard, checkpoint/resume).

Per-batch optimisation (`run_batches`): the set is cut into synthetic batches
(`teddy.shards.batch_plan`); each batch gets `iterations` steps with a fresh Adam and its own
cosine schedule, a generator (and global torch seed) from (seed, method name, IPC, batch
index), then is handed to `task.on_batch` (the stage writes its PNGs) and freed, so peak
memory is that of one batch (one stack) whatever the IPC. `task.batches` restricts the run to
some batch indices (a shard, less the batches already written).

Stacked batches (recipe key `stack`, G; `optimise_stack`): a job's batches run G at a time, in
order, optimised together. Each keeps what makes it its own run (generator, augmentation and
pool draws in the same order, Adam state, schedule, loss over its own images, clipping); at
each step the batches that drew the same pool member share ONE forward through it (their
concatenation; the member is frozen and in eval mode, so an image's features do not depend on
the others) and the BN-statistics terms are taken per batch over its rows. A speed knob: the set
does not depend on G (tests/test_stack.py). It applies where the loss has a stacked form
(`loss_fn.stacked`: teddy statistics matching, sre2l) and the pool holds stored members
(WeakPool); gradient matching, bilevel (it draws from the global RNG per batch and step), fresh
pools and set-level methods run unstacked whatever `stack` says. Nothing inside the stacked
loop draws from the global torch RNG (augmentation and pool draws use the batch's generator;
the members are in eval mode), so it does not matter that, in a stack, the global seed
`start_batch` sets for each batch is overwritten by the next batch's.

No host synchronisation inside the loop: losses stay on the device and are read every
`log_every` steps, before each checkpoint and at the end (`optimise_stack`)."""

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
from teddy.data import DatasetInfo, class_indices, draw_indices, stack_items
from teddy.errors import TeddyError
from teddy.pool import WeakPool
from teddy.recipes import autocast_for
from teddy.resume import Resumable
from teddy.shards import batch_plan, batch_seed


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
    return [draw_indices(idx, task.ipc, generator) for idx in real_indices_per_class(task)]


def select_real(task: DistillTask, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` random real images of every class, class-major order."""
    return stack_items(task.real, torch.cat(chosen_real(task, generator)))


# what the harness uses when a recipe leaves a key out; the per-batch methods register these
# among their defaults (teddy.methods.registry), so `full_recipe` fills them in (plain JSON data).
# stack: synthetic batches of a job optimised together (a speed knob: the set does not depend on it)
HARNESS_DEFAULTS = {"iterations": 1000, "lr": 0.1, "betas": [0.5, 0.9], "batch_size": 100, "init": "real",
                    "stack": 1}

# the recipe keys of every method that runs through run_batches (its schema)
HARNESS_KEYS = {
    "iterations": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
    "lr": {"type": "number", "exclusiveMinimum": 0},
    "betas": {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "minItems": 2, "maxItems": 2, "description": "Adam betas on the pixels (default 0.5, 0.9)"},
    "init": {"enum": ["real", "noise"]},
    "augment": {"$ref": "#/definitions/augment"},
}

LossFn = Callable[[torch.nn.Module | None, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict]]
# loss_fn.stacked(model, xs, ys, iteration) -> [(loss_k, parts_k)]: the losses of several batches
# that drew the same (frozen, eval-mode) pool member, through one forward of it (a loss function
# that has this attribute can be stacked: `stackable`)
StackedLossFn = Callable[[torch.nn.Module, list, list, int], list]


@dataclass
class BatchStart:
    """One synthetic batch as it enters the loop: its index in the plan, starting images,
    labels and its own generator (augmentation and pool draws)."""
    index: int
    images: torch.Tensor
    labels: torch.Tensor
    generator: torch.Generator


def stackable(task: DistillTask, loss_fn: LossFn | None) -> bool:
    """Whether batches can share forwards: the loss has a stacked form (teddy's statistics loss,
    sre2l's) and the pool is one of stored, frozen members (WeakPool). Gradient matching (double
    backward per class and member), bilevel (a fresh model per batch and step, drawn from the
    global RNG), fresh-model pools (a new model per draw) and set-level methods run unstacked."""
    return loss_fn is not None and getattr(loss_fn, "stacked", None) is not None and isinstance(task.pool, WeakPool)


def stack_size(task: DistillTask, loss_fn: LossFn | None) -> int:
    g = int(task.recipe.get("stack", HARNESS_DEFAULTS["stack"]))
    if g < 1:
        raise TeddyError(f"stack must be >= 1, got {g} (recipe key stack / config key distill.stack)")
    return g if stackable(task, loss_fn) else 1


def compiled(model: torch.nn.Module, cache: dict) -> torch.nn.Module:
    """`torch.compile(model)`, once per pool member (recipe key compile; untested on a GPU here).
    It specialises on the forward's shape (how many stacked batches share it, and their sizes):
    up to G compilations per member at the start of a stack."""
    if id(model) not in cache:
        cache[id(model)] = torch.compile(model, dynamic=True)
    return cache[id(model)]


def optimise_synthetic(task: DistillTask, images: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn,
                       generator: torch.Generator, desc: str, batch: int = 0) -> Distilled:
    """Minimise `loss_fn(model, augmented_images, labels, iteration)` over the pixels of one
    synthetic batch (all of `images`, every step), with a fresh Adam and cosine schedule.
    `model` is drawn from the pool each iteration (None when the task has no pool)."""
    [result] = optimise_stack(task, [BatchStart(int(batch), images, labels, generator)], loss_fn, desc)
    return result


def optimise_stack(task: DistillTask, batches: list[BatchStart], loss_fn: LossFn, desc: str) -> list[Distilled]:
    """Optimise the pixels of G synthetic batches together (G = len(batches); 1 unless the loss is
    `stackable`). Each batch keeps what makes it its own run: its generator (augmentation, then the
    pool draw, each step, in that order), its Adam state (one Adam, one parameter per batch: Adam is
    elementwise, so this is G independent Adams), its cosine schedule (the same for all: they start
    together), its loss over its own images, its pixel clipping. Shared: at each step, the batches
    that drew the same pool member go through it in one forward (`loss_fn.stacked`), one forward
    and one backward per distinct member; the members are frozen, so no weight gradient is made.

    No host synchronisation inside the loop: the per-step losses stay on the device and are read
    (finiteness checked, history written) every `log_every` steps, before each checkpoint and at
    the end (`LossWindow`). A non-finite loss stops the run naming its first iteration and the
    window checked; the checkpoint on disk was written after the last check, so it is a good one."""
    r, device = task.recipe, task.device
    iterations = int(r.get("iterations", HARNESS_DEFAULTS["iterations"]))
    if iterations < 1:
        raise TeddyError(f"iterations must be >= 1, got {iterations}")
    G = len(batches)
    stacked = stackable(task, loss_fn)  # through loss_fn.stacked (also for G = 1: the same computation)
    if G > 1 and not stacked:
        raise TeddyError(f"{desc}: this loss or pool cannot be stacked (stack {G})")
    syns, labels = stack_pixels(task, batches)
    generators = [b.generator for b in batches]
    optimizer, scheduler = pixel_optimiser(syns, r, iterations)
    lo, hi = pixel_bounds(task.info, device)
    log_every = int(r.get("log_every", max(1, iterations // 20)))
    ckpt_every = int(r.get("checkpoint_every", max(1, iterations // 10)))
    amp = bool(r.get("amp", False))  # bf16 autocast of the forward pass, CUDA only
    compile_cache = {} if r.get("compile") else None
    one = G == 1  # a single batch's checkpoint holds its own values, not lists of them
    checkpoint = stack_checkpoint(task, batches, syns)
    histories, start, elapsed = [[] for _ in batches], 0, 0.0
    state = checkpoint.load(optimizer, scheduler, generators[0] if one else generators)
    if state is not None:
        with torch.no_grad():
            for syn, saved in zip(syns, [state["images"]] if one else state["images"]):
                syn.copy_(saved.to(device))
        histories = [state["history"]] if one else state["history"]
        start, elapsed = state["iteration"], state["elapsed"]
        print(f"resuming {desc} from {checkpoint.path} at iteration {start}/{iterations}", file=sys.stderr)
    window = LossWindow(checkpoint, histories, desc, log_every, [b.index for b in batches])

    t0 = time.perf_counter()
    bar = tqdm(range(start, iterations), desc=desc, file=sys.stderr, mininterval=5, disable=False,
               initial=start, total=iterations)
    for it in bar:
        xs, draws = augment_and_draw(task, syns, generators, it, stacked)
        optimizer.zero_grad(set_to_none=True)
        if stacked:
            losses, parts = stacked_backward(task, loss_fn, xs, labels, draws, it, amp, compile_cache)
        else:
            with autocast_for(device, amp):
                loss, part = loss_fn(draws[0], xs[0], labels[0], it)
            loss.backward()
            losses, parts = [loss], [part]
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for syn in syns:
                syn.copy_(torch.maximum(torch.minimum(syn, hi), lo))
        logged = (it + 1) % log_every == 0 or it == 0  # the same log whether or not the run was resumed
        window.add(it, losses, parts if logged else None)
        saving = checkpoint.path is not None and (it + 1) % ckpt_every == 0 and it + 1 < iterations
        if logged or saving or it + 1 == iterations:
            window.check(bar)
        if saving:
            checkpoint.save(optimizer, scheduler, generators[0] if one else generators,
                            histories[0] if one else histories,
                            images=syns[0].detach().cpu() if one else [syn.detach().cpu() for syn in syns],
                            iteration=it + 1, elapsed=elapsed + time.perf_counter() - t0)
    window.check(bar)
    seconds = elapsed + time.perf_counter() - t0
    return [Distilled(syn.detach().cpu(), y.cpu(), {"history": h, "iterations": iterations, "optimise_seconds": seconds,
                                                    **({"stacked_with": [b.index for b in batches]} if G > 1 else {})})
            for syn, y, h in zip(syns, labels, histories)]


def stack_pixels(task: DistillTask, batches: list[BatchStart]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The batches' pixels as leaf tensors on the device (channels-last on CUDA when the recipe
    asks: faster convolutions under bf16 autocast, the pool members too) and their labels."""
    device = task.device
    syns = [b.images.clone().to(device) for b in batches]
    if task.recipe.get("channels_last") and device.type == "cuda":
        syns = [syn.contiguous(memory_format=torch.channels_last) for syn in syns]
        for member in getattr(task.pool, "members", []):
            member.to(memory_format=torch.channels_last)
    for syn in syns:
        syn.requires_grad_(True)
    return syns, [b.labels.to(device) for b in batches]


def pixel_optimiser(syns: list[torch.Tensor], recipe: dict, iterations: int):
    """One Adam over every batch's pixels (elementwise: G independent Adams) and its cosine
    schedule to 0 over `iterations`."""
    optimizer = torch.optim.Adam(syns, lr=float(recipe.get("lr", HARNESS_DEFAULTS["lr"])),
                                 betas=tuple(recipe.get("betas", HARNESS_DEFAULTS["betas"])))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / iterations)))
    return optimizer, scheduler


def stack_checkpoint(task: DistillTask, batches: list[BatchStart], syns: list[torch.Tensor]) -> Resumable:
    """The stack's checkpoint; it only resumes the same run: same recipe, IPC, seed, batch(es)
    and image count(s)."""
    settings = {"recipe": dict(task.recipe), "ipc": int(task.ipc), "seed": int(task.seed), "name": task.seed_name}
    if len(batches) == 1:
        settings.update(images=int(syns[0].shape[0]), batch=int(batches[0].index))
    else:
        settings.update(images=[int(syn.shape[0]) for syn in syns], batch=[int(b.index) for b in batches])
    return Resumable(task.checkpoint_path, settings, "distillation checkpoint")


def augment_and_draw(task: DistillTask, syns, generators, it: int, stacked: bool):
    """Per batch, from its own generator and in this order: its augmentation, then its pool draw
    (the member's index when stacked, as WeakPool.sample draws it; the model otherwise, None
    without a pool)."""
    aug_cfg = task.recipe.get("augment") or {}
    xs, draws = [], []
    for syn, generator in zip(syns, generators):
        x = syn
        if aug_cfg:
            x = apply_augment(x, sample_augment_params(x.shape[0], task.info.image_size, aug_cfg, generator))
        xs.append(x)
        if stacked:
            draws.append(task.pool.index(it, generator))
        else:
            draws.append(task.pool.sample(it, generator) if task.pool is not None else None)
    return xs, draws


def stacked_backward(task: DistillTask, loss_fn: LossFn, xs, labels, draws, it: int, amp: bool,
                     compile_cache: dict | None) -> tuple[list, list]:
    """One forward and one backward per distinct member drawn, the batches in their order; the
    sum of their losses is backpropagated, so each batch's pixels get exactly their own loss's
    gradient. Returns each batch's loss and parts."""
    losses, parts = [None] * len(xs), [None] * len(xs)
    for m in dict.fromkeys(draws):
        ks = [k for k in range(len(xs)) if draws[k] == m]
        member = task.pool.members[m]
        model = member if compile_cache is None else compiled(member, compile_cache)
        with autocast_for(task.device, amp):
            out = loss_fn.stacked(model, [xs[k] for k in ks], [labels[k] for k in ks], it)
        for k, (loss, part) in zip(ks, out):
            losses[k], parts[k] = loss, part
        total = out[0][0]
        for loss, _ in out[1:]:
            total = total + loss
        total.backward()
    return losses, parts


class LossWindow:
    """The per-step losses since the last read, kept on the device; `check` reads them (one host
    synchronisation): the NaN guard, then each batch's history."""

    def __init__(self, checkpoint: Resumable, histories: list, desc: str, log_every: int, batch_indices: list):
        self.checkpoint, self.histories, self.desc = checkpoint, histories, desc
        self.log_every, self.batch_indices = log_every, batch_indices
        self.pending: list[tuple[int, torch.Tensor, list | None]] = []  # (iteration, G losses, parts to log)

    def add(self, it: int, losses: list, parts: list | None) -> None:
        self.pending.append((it, torch.stack([loss.detach().float() for loss in losses]), parts))

    def check(self, bar) -> None:
        pending = self.pending
        if not pending:
            return
        values = torch.stack([p[1] for p in pending]).cpu()  # steps x G
        bad = (~torch.isfinite(values)).any(dim=1).nonzero()
        if len(bad):
            first, window = pending[int(bad[0])][0], (pending[0][0] + 1, pending[-1][0] + 1)
            where = f"iteration {first + 1}"
            if window[0] != window[1]:
                where += f" (losses read every log_every = {self.log_every} steps: iterations {window[0]}-{window[1]})"
            if len(self.batch_indices) > 1:
                where += f", stacked batches {self.batch_indices}"
            self.checkpoint.check_finite(values[int(bad[0])].sum(), self.desc, where)
        for it, losses, parts in pending:
            if parts is not None:
                for k, history in enumerate(self.histories):
                    history.append({"iteration": it + 1, "loss": float(losses[k]),
                                    **{name: float(v) for name, v in parts[k].items()}})
        bar.set_postfix(loss=round(float(values[-1].mean()), 4))
        pending.clear()


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
    wanted = list(range(len(plan))) if task.batches is None else [int(b) for b in task.batches]
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
    G = stack_size(task, loss_fn)
    kept, logs = [], []
    for first in range(0, len(wanted), G):  # the batches in order, G at a time
        stack = wanted[first:first + G]
        starts = []
        for b in stack:
            labels, index_in_class = plan[b]
            images, generator, seed = start_batch(task, b, labels, index_in_class, chosen)
            starts.append((BatchStart(int(b), images, labels, generator), index_in_class, seed))
        results = [None] * len(starts)
        if loss_fn is not None:
            where = f"batch {stack[0] + 1}/{len(plan)}" if len(stack) == 1 else \
                f"batches {', '.join(str(b + 1) for b in stack)}/{len(plan)}"
            results = optimise_stack(task, [s[0] for s in starts], loss_fn, desc=f"{desc} {where}")
        for (start, index_in_class, seed), result in zip(starts, results):
            log = {"batch": start.index, "images": int(len(start.labels)), "seed": seed}
            images = start.images
            if result is not None:
                images = result.images
                log.update(result.log)
            batch = SyntheticBatch(start.index, images, start.labels, index_in_class, log)
            logs.append(log)
            if task.on_batch is not None:
                task.on_batch(batch)  # written, then freed: nothing of it is kept here
            else:
                kept.append(batch)
            del batch, images
        del starts, results
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
