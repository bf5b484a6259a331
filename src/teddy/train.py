"""The one supervised training loop: base training, pool fine-tuning, ceilings and students.

`fit` sets a run up (optimiser, schedule, plan generator, checkpoint) and calls
`train_one_epoch(model, batches, targets, optimizer, ...)` once per epoch, where `targets` is
the label source: `HardLabels`, `TeacherTargets` (online knowledge distillation: KL between
temperature-softened outputs, `teddy.losses.kd_loss`) or `StoredTargets` (a label store).
Checkpoints (teddy.resume) are written atomically and a rerun resumes from the last one with
the same optimiser, schedule and RNG state, so an interrupted run ends with the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import os
import sys
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from teddy.data import batches
from teddy.distributed import all_reduce_sum, rank_world
from teddy.distributed import wrap as distributed_wrap
from teddy.errors import TeddyError
from teddy.label_store import LabelStore
from teddy.losses import kd_loss
from teddy.recipes import autocast_for, compiled, lr_schedule, make_optimizer, reset_momentum_at, trained_epochs
from teddy.resume import Resumable
from teddy.student_data import StudentData, mixed_cross_entropy, plan_epoch


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset, device: torch.device, batch_size: int = 1000,
                      amp: bool = False) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches(dataset, batch_size, False, None, device):
        with autocast_for(device, amp):
            correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return correct / max(1, total)


# --- what a micro-batch's loss is measured against ---------------------------------------------

KD_LOSSES = ("kl", "mse_ce")  # recipe key kd_loss

class Targets:
    """The label source of a run: hard labels, a teacher (online KD) or a label store (stored KD).
    `configure` reads the loss mix from the recipe (`hard_label_weight`: 1 without KD, 0 with;
    `temperature`: 4); `plan` gives the epoch's plan (drawn, or stored); `loss` is the one
    method the loop calls, for one micro-batch."""

    kd = False
    hard_weight, temperature, t_squared, loss_form, device = 1.0, 4.0, True, "kl", None  # until `configure`

    def configure(self, recipe: dict, device: torch.device) -> "Targets":
        self.device = device
        self.temperature = float(recipe.get("temperature", 4.0))
        self.t_squared = bool(recipe.get("kd_t_squared", True))
        self.hard_weight = float(recipe.get("hard_label_weight", 0.0 if self.kd else 1.0))
        self.loss_form = recipe.get("kd_loss", "kl")
        if self.loss_form not in KD_LOSSES:
            raise TeddyError(f"unknown kd_loss '{self.loss_form}' (recipe key kd_loss; known: {', '.join(KD_LOSSES)})")
        return self

    def plan(self, epoch: int, draw: Callable[[], dict]) -> dict:
        """The epoch's plan: `draw()` (from the run's generator) unless the source stores its own."""
        self.current = draw()
        return self.current

    def soft_logits(self, x: torch.Tensor, mb) -> torch.Tensor | None:
        return None

    def loss(self, logits: torch.Tensor, x: torch.Tensor, mb) -> torch.Tensor:
        """hard_label_weight x CE towards the (mixed) labels, plus the KD loss when the source has
        soft targets; kd_loss mse_ce: MSE between student and teacher logits plus hard_label_weight x
        CE towards each image's own label, unmixed (G-VBSM's and EDC's `mse_gt`)."""
        if self.kd and self.loss_form == "mse_ce":
            teacher_logits = self.soft_logits(x, mb)
            loss = F.mse_loss(logits.float(), teacher_logits.float())
            return loss + self.hard_weight * F.cross_entropy(logits, mb.y) if self.hard_weight else loss
        loss = self.hard_weight * mixed_cross_entropy(logits, mb.y, mb) if self.hard_weight else 0.0
        teacher_logits = self.soft_logits(x, mb)
        if teacher_logits is not None:
            loss = loss + kd_loss(logits.float(), teacher_logits.float(), self.temperature, self.t_squared)
        return loss


class HardLabels(Targets):
    """Cross-entropy towards the images' labels (mixed as the plan mixes the images)."""


class TeacherTargets(Targets):
    """Online KD: the teacher run, in eval mode, on each augmented micro-batch."""

    kd, hard_weight = True, 0.0

    def __init__(self, teacher: nn.Module):
        self.teacher = self.forward = teacher

    def configure(self, recipe: dict, device: torch.device) -> "Targets":
        self.teacher.to(device).eval()
        if device.type == "cuda" and recipe.get("channels_last"):  # the student's inputs are channels-last
            self.teacher.to(memory_format=torch.channels_last)
        self.forward = compiled(self.teacher, recipe, device)
        return super().configure(recipe, device)

    def soft_logits(self, x, mb):
        with torch.no_grad():
            return self.forward(x)


class StoredTargets(Targets):
    """Stored KD (teddy.label_store): the stored plans and teacher logits replace the drawn
    ones, so no teacher is needed and the student sees what the online run would."""

    kd, hard_weight = True, 0.0

    def __init__(self, store: LabelStore):
        self.store = store

    def configure(self, recipe: dict, device: torch.device) -> "Targets":
        super().configure(recipe, device)
        if self.loss_form == "mse_ce" and int(self.store.meta["keep_topk"]) < self.store.num_classes:
            raise TeddyError(f"kd_loss mse_ce regresses every logit, but the store {self.store.meta_path} keeps "
                             f"only the top {self.store.meta['keep_topk']} (config key evaluate.keep_topk)")
        return self

    def plan(self, epoch, draw):
        self.current = self.store.epoch(epoch)
        return self.current

    def soft_logits(self, x, mb):
        return self.store.logits(self.current, mb.positions, self.device)


def targets_for(teacher: nn.Module | None = None, label_store: LabelStore | None = None) -> Targets:
    """The label source of a student run: a teacher, a label store, or (neither) hard labels."""
    if label_store is not None and teacher is not None:
        raise ValueError("give a teacher or a label_store, not both")
    if teacher is not None:
        return TeacherTargets(teacher)
    return StoredTargets(label_store) if label_store is not None else HardLabels()


# --- the loop ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepSettings:
    """How every step of a run is made, fixed for the run: where, how many micro-batches per
    optimiser step (`accumulate`) and processes (`world`), channels-last pixels and bf16 autocast
    (CUDA only), and whether the NaN guard reads each step's loss (None: on CPU only, so that a GPU
    step does not wait for the host; otherwise once per epoch)."""
    device: torch.device
    accumulate: int = 1
    world: int = 1
    channels_last: bool = False
    amp: bool = False
    check_each_step: bool | None = None


def train_one_epoch(model: nn.Module, batches, targets: Targets, optimizer: torch.optim.Optimizer, scheduler,
                    step: StepSettings, *, guard: Resumable | None = None, desc: str = "train", epoch: int = 0,
                    ema=None) -> float:
    """One epoch over `batches` (teddy.student_data MicroBatches, `step.accumulate` per optimiser
    step); `model` may be DDP-wrapped (gradients all-reduced on the last micro-batch of a batch
    only). Returns the mean loss over every image of the epoch, summed over processes. `guard` (the
    run's checkpoint) names the checkpoint kept when a loss is not finite. `ema` (an `ema_of`
    average) follows every optimiser step."""
    guard = guard if guard is not None else Resumable(None, {})
    device, accumulate, world, channels_last, amp = step.device, step.accumulate, step.world, step.channels_last, step.amp
    model.train()
    # the running loss stays on the device (float64: the same sums as Python floats of the
    # per-step losses) and is read once per epoch; off CPU the NaN guard reads it then too
    total_loss, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    check_each_step = device.type == "cpu" if step.check_each_step is None else bool(step.check_each_step)
    for mb in batches:
        x = mb.x.contiguous(memory_format=torch.channels_last) if channels_last else mb.x
        if mb.micro == 0:
            optimizer.zero_grad(set_to_none=True)
        last = mb.micro == accumulate - 1
        sync = nullcontext() if last or world == 1 else model.no_sync()
        with sync:
            with autocast_for(device, amp):
                logits = model(x)
                loss = targets.loss(logits, x, mb)
            if check_each_step:
                guard.check_finite(loss, desc, f"epoch {epoch + 1}, step {mb.step + 1}")
            # each share weighted by its size: the update is that of the whole batch's mean loss
            (loss * (len(mb.y) * world / mb.batch_size)).backward()
        if last:
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
        total_loss += loss.detach().double() * len(mb.y)
        seen += len(mb.y)
    total_loss, seen = all_reduce_sum([total_loss.item(), seen], device)
    if not check_each_step:  # the losses are >= 0: the sum (over processes too) is finite iff every one is
        guard.check_finite(torch.tensor(total_loss), desc,
                           f"epoch {epoch + 1} (checked once per epoch on {device.type})")
    return total_loss / max(1, seen)


def ema_of(model: nn.Module, recipe: dict):
    """The recipe's exponential moving average of the parameters (`ema_decay`), or None. As EDC's
    EMAMODEL: it starts from the initial weights and moves after every optimiser step,
    ema = decay x ema + (1 - decay) x weights; buffers (BatchNorm statistics) are not averaged."""
    if recipe.get("ema_decay") is None:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(recipe["ema_decay"])), use_buffers=False)
    ema.update_parameters(model)  # the first update copies: the average starts at the initial weights
    return ema


@torch.no_grad()
def swap_ema_weights(model: nn.Module, ema) -> None:
    """Exchange the model's parameters with the average's (twice restores them); the model keeps
    its own buffers, as EDC's ema_swap does for validation."""
    for own, averaged in zip(model.parameters(), ema.module.parameters()):
        kept = own.detach().clone()
        own.copy_(averaged)
        averaged.copy_(kept)


def resume_run(checkpoint: Resumable, optimizer, scheduler, generator, model: nn.Module, ema, desc: str,
               epochs: int) -> tuple[list, int]:
    """Load the run's last checkpoint, if any, into the optimiser, schedule, generator, model and
    EMA; returns (history so far, epochs done)."""
    state = checkpoint.load(optimizer, scheduler, generator)
    if state is None:
        return [], 0
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    print(f"resuming {desc} from {checkpoint.path} at epoch {state['epoch']}/{epochs}", file=sys.stderr)
    return state["history"], state["epoch"]


def accuracy_of_run(model: nn.Module, ema, dataset, device: torch.device, amp: bool) -> float:
    """The test (or validation) accuracy of what the run returns: the moving average of the
    parameters when it keeps one (swapped in and back), the model otherwise."""
    if ema is not None:
        swap_ema_weights(model, ema)
    accuracy = evaluate_accuracy(model, dataset, device, amp=amp)
    if ema is not None:
        swap_ema_weights(model, ema)
    return accuracy


def fit(model: nn.Module, train_set, recipe: dict, device: torch.device, seed: int = 0, *,
        targets: Targets | None = None, eval_set=None,
        on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None,
        checkpoint_path: str | os.PathLike | None = None, desc: str = "train", info=None) -> list[dict]:
    """Train `model` on `train_set` following `recipe` and return per-epoch metrics.

    Batches follow an epoch plan (teddy.student_data: per-image crops, flips, shifts, CutMix or
    Mixup) drawn from a generator seeded with `seed`. `targets` is the label source (default
    hard labels; `targets_for(teacher=...)` or `targets_for(label_store=...)` for KD). Inside
    torchrun (teddy.distributed) each process trains on its share of every batch; `info`
    (DatasetInfo) gives ImageFolder data its crop size and normalisation. With a
    `checkpoint_path` the run resumes (teddy.resume) from its last checkpoint.

    recipe keys: epochs, batch_size, accumulate (micro-batches per batch), optimizer
    (sgd|adam|adamw), lr, momentum, weight_decay, warmup_epochs, augment ({} for none),
    temperature (KD), hard_label_weight (KD + CE mix), amp, channels_last (student and teacher),
    compile (torch.compile of student and teacher; amp, channels_last and compile act on CUDA
    only), checkpoint_every (epochs), eval_every (epochs), stop_after_epoch (train the schedule of
    `epochs`, stop after this one), kd_loss (kl | mse_ce), ema_decay (evaluate and return the
    moving average of the parameters: `ema_of`).
    """
    epochs, batch_size = trained_epochs(recipe), int(recipe["batch_size"])
    accumulate = int(recipe.get("accumulate", 1))
    rank, world = rank_world()
    chunks = world * accumulate
    if chunks > batch_size:
        raise TeddyError(f"batch_size {batch_size} is smaller than processes x accumulate = {chunks} "
                         f"(recipe keys batch_size, accumulate)")
    image_size = info.image_size if info is not None else int(getattr(train_set, "image_size", 0)
                                                                or train_set.images.shape[-1])
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    model.to(device)
    channels_last = bool(recipe.get("channels_last")) and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), recipe)
    scheduler = lr_schedule(optimizer, recipe, steps_per_epoch)
    fresh_optimizer_after = reset_momentum_at(recipe)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    aug_cfg = recipe.get("augment") or {}
    amp = bool(recipe.get("amp", False))
    targets = (targets if targets is not None else HardLabels()).configure(recipe, device)

    # a checkpoint only resumes the same run: same recipe, seed, data size, teacher use and processes
    checkpoint = Resumable(checkpoint_path, {"recipe": dict(recipe), "seed": int(seed), "train_size": len(train_set),
                                             "teacher": targets.kd, **({"processes": world} if world > 1 else {})})
    ema = ema_of(model, recipe)
    history, start_epoch = resume_run(checkpoint, optimizer, scheduler, generator, model, ema, desc, epochs)
    every = int(recipe.get("checkpoint_every", max(1, epochs // 10)))
    eval_every = int(recipe.get("eval_every", 0))
    data = StudentData(train_set, image_size, device, mean=info.mean if info else None,
                       std=info.std if info else None, num_workers=getattr(train_set, "num_workers", 0),
                       rank=rank, world=world, accumulate=accumulate)
    net = compiled(distributed_wrap(model, device), recipe, device)
    step = StepSettings(device, accumulate, world, channels_last, amp)

    bar = tqdm(range(start_epoch, epochs), desc=desc, file=sys.stderr, mininterval=5, disable=rank != 0,
               initial=start_epoch, total=epochs)
    for epoch in bar:
        plan = targets.plan(epoch, lambda: plan_epoch(len(train_set), batch_size, image_size, aug_cfg, generator,
                                                      chunks))
        loss = train_one_epoch(net, data.epoch(plan), targets, optimizer, scheduler, step, guard=checkpoint,
                               desc=desc, epoch=epoch, ema=ema)
        if epoch + 1 in fresh_optimizer_after:
            optimizer.state.clear()  # momentum buffers gone, as with DC's new optimiser
        metrics = {"epoch": epoch + 1, "loss": loss, "lr": scheduler.get_last_lr()[0]}
        if eval_set is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            metrics["eval_accuracy"] = accuracy_of_run(model, ema, eval_set, device, amp)
        history.append(metrics)
        bar.set_postfix({k: round(v, 4) for k, v in metrics.items() if k != "epoch"})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, metrics)
        if rank == 0 and ((epoch + 1) % every == 0 and epoch + 1 < epochs):
            checkpoint.save(optimizer, scheduler, generator, history, model=model.state_dict(), epoch=epoch + 1,
                            **({"ema": ema.state_dict()} if ema is not None else {}))
    if ema is not None:  # the run's result is the average
        swap_ema_weights(model, ema)
    return history


@torch.no_grad()
def recalibrate_bn(model: nn.Module, dataset, device: torch.device, batches_to_use: int = 20,
                   batch_size: int = 256, seed: int = 0) -> None:
    """Reset BatchNorm running statistics and re-estimate them on real data (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    for i, (x, _) in enumerate(batches(dataset, batch_size, True, generator, device)):
        if i >= batches_to_use:
            break
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


# a trained model this close to chance (in accuracy points) is flagged at train time
NEAR_CHANCE_POINTS = 5.0


def near_chance_warning(accuracy: float, num_classes: int, what: str, key: str) -> str | None:
    """One warning line when `accuracy` (a fraction) is within NEAR_CHANCE_POINTS of chance,
    naming the recipe key to change; printed to the job's log (stderr), None otherwise."""
    chance = 100.0 / max(1, int(num_classes))
    if 100.0 * float(accuracy) - chance >= NEAR_CHANCE_POINTS:
        return None
    line = (f"warning: {what} scores {100.0 * float(accuracy):.1f}% on the test set, within "
            f"{NEAR_CHANCE_POINTS:g} points of chance ({chance:.1f}%): it teaches the tables' rows next to "
            f"nothing; give it more optimiser steps ({key})")
    print(line, file=sys.stderr)
    return line
