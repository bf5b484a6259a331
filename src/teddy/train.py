"""The one supervised training loop: base training, pool fine-tuning, ceilings and students.

Hard labels, or knowledge distillation from a teacher (KL between temperature-softened
outputs). Checkpoints are written atomically and a rerun resumes from the last one with the
same optimiser, schedule and RNG state, so an interrupted run ends with the same numbers.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from teddy.data import batches
from teddy.distributed import all_reduce_sum, rank_world
from teddy.distributed import wrap as distributed_wrap
from teddy.errors import TeddyError
from teddy.io import load_torch, save_torch
from teddy.label_store import LabelStore
from teddy.student_data import StudentData, mixed_cross_entropy, plan_epoch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TeddyError(f"device '{name}' requested (config key device) but CUDA is not available")
    return torch.device(name)


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; a no-op on CPU so CPU runs stay exact."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher/T || student/T) * T^2 (Hinton et al.), batch-mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def make_optimizer(params, recipe: dict) -> torch.optim.Optimizer:
    name = recipe.get("optimizer", "sgd")
    lr, wd = float(recipe["lr"]), float(recipe.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(recipe.get("momentum", 0.9)), weight_decay=wd,
                               nesterov=bool(recipe.get("nesterov", False)))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(recipe.get("betas", (0.9, 0.999))), weight_decay=wd)
    raise TeddyError(f"unknown optimizer '{name}' (recipe key optimizer)")


def cosine_with_warmup(optimizer, total_steps: int, warmup_steps: int = 0):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def load_checkpoint(path, what: str = "training checkpoint", settings: dict | None = None):
    """The newest usable checkpoint: `path`, else the `.prev` copy kept beside it, else None
    (start clean). A truncated or corrupt file, or one written under other `settings` (the
    config changed since), is skipped with a warning."""
    path = Path(path)
    found = [p for p in (path, Path(str(path) + ".prev")) if p.exists()]
    for candidate in found:
        try:
            state = load_torch(candidate, what=what)
        except TeddyError as exc:
            print(f"warning: {exc}", file=sys.stderr)
            continue
        if settings is not None and state.get("settings") != settings:
            print(f"warning: {candidate} was written under other settings; not resuming from it", file=sys.stderr)
            continue
        if candidate != path:
            print(f"warning: falling back to the previous checkpoint {candidate}", file=sys.stderr)
        return state
    if found:
        print(f"warning: no usable {what} at {path}; starting clean", file=sys.stderr)
    return None


def save_checkpoint(path, state: dict) -> None:
    """Atomic write; the previous checkpoint is kept as `.prev` until the new one is on disk."""
    path = Path(path)
    if path.exists():
        os.replace(path, Path(str(path) + ".prev"))
    save_torch(state, path)


def rng_state() -> dict:
    """Global torch RNG state (CPU, and every CUDA device when present) for a checkpoint."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def train_model(model: nn.Module, train_set, recipe: dict, device: torch.device, seed: int = 0, *,
                teacher: nn.Module | None = None, eval_set=None,
                on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None,
                checkpoint_path: str | os.PathLike | None = None, desc: str = "train",
                label_store: LabelStore | None = None, info=None) -> list[dict]:
    """Train `model` on `train_set` following `recipe` and return per-epoch metrics.

    Batches follow an epoch plan (teddy.student_data: per-image crops, flips, shifts, CutMix or
    Mixup) drawn from a generator seeded with `seed`. KD targets come from `teacher` run on each
    augmented batch, or from `label_store` (teddy.label_store), whose stored plans and teacher
    logits replace the drawn ones, so no teacher is needed and the student sees what the online
    run would. Inside torchrun (teddy.distributed) each process trains on its share of every
    batch; `info` (DatasetInfo) gives ImageFolder data its crop size and normalisation.

    recipe keys: epochs, batch_size, accumulate (micro-batches per batch), optimizer
    (sgd|adam|adamw), lr, momentum, weight_decay, warmup_epochs, augment ({} for none),
    temperature (KD), hard_label_weight (KD + CE mix), amp, channels_last, checkpoint_every
    (epochs), eval_every (epochs).
    """
    epochs, batch_size = int(recipe["epochs"]), int(recipe["batch_size"])
    accumulate = int(recipe.get("accumulate", 1))
    rank, world = rank_world()
    chunks = world * accumulate
    if chunks > batch_size:
        raise TeddyError(f"batch_size {batch_size} is smaller than processes x accumulate = {chunks} "
                         f"(recipe keys batch_size, accumulate)")
    image_size = info.image_size if info is not None else int(train_set.images.shape[-1])
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    model.to(device)
    channels_last = bool(recipe.get("channels_last")) and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), recipe)
    scheduler = cosine_with_warmup(optimizer, epochs * steps_per_epoch,
                                   int(recipe.get("warmup_epochs", 0)) * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    aug_cfg = recipe.get("augment") or {}
    temperature = float(recipe.get("temperature", 4.0))
    kd = teacher is not None or label_store is not None
    hard_weight = float(recipe.get("hard_label_weight", 0.0 if kd else 1.0))
    if label_store is not None and teacher is not None:
        raise ValueError("give train_model a teacher or a label_store, not both")
    amp = bool(recipe.get("amp", False))
    if teacher is not None:
        teacher.to(device).eval()
    history, start_epoch = [], 0

    ckpt_path = Path(checkpoint_path) if checkpoint_path else None
    # a checkpoint only resumes the same run: same recipe, seed, data size, teacher use and processes
    settings = {"recipe": dict(recipe), "seed": int(seed), "train_size": len(train_set),
                "teacher": kd, **({"processes": world} if world > 1 else {})}
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path, settings=settings)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            set_rng_state(state)
            history, start_epoch = state["history"], state["epoch"]
            print(f"resuming {desc} from {ckpt_path} at epoch {start_epoch}/{epochs}", file=sys.stderr)
    every = int(recipe.get("checkpoint_every", max(1, epochs // 10)))
    eval_every = int(recipe.get("eval_every", 0))
    data = StudentData(train_set, image_size, device, mean=info.mean if info else None,
                       std=info.std if info else None, num_workers=getattr(train_set, "num_workers", 0),
                       rank=rank, world=world, accumulate=accumulate)
    net = distributed_wrap(model, device)

    bar = tqdm(range(start_epoch, epochs), desc=desc, file=sys.stderr, mininterval=5, disable=rank != 0,
               initial=start_epoch, total=epochs)
    for epoch in bar:
        net.train()
        total_loss, seen = 0.0, 0
        if label_store is None:
            plan = plan_epoch(len(train_set), batch_size, image_size, aug_cfg, generator, chunks)
        else:
            plan = label_store.epoch(epoch)
        for mb in data.epoch(plan):
            x = mb.x.contiguous(memory_format=torch.channels_last) if channels_last else mb.x
            if mb.micro == 0:
                optimizer.zero_grad(set_to_none=True)
            last = mb.micro == accumulate - 1
            # DDP all-reduces gradients on the last micro-batch of a batch only
            sync = nullcontext() if last or world == 1 else net.no_sync()
            with sync:
                with autocast_for(device, amp):
                    logits = net(x)
                    loss = hard_weight * mixed_cross_entropy(logits, mb.y, mb) if hard_weight else 0.0
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                    elif label_store is not None:
                        teacher_logits = label_store.logits(plan, mb.positions, device)
                    if kd:
                        loss = loss + kd_loss(logits.float(), teacher_logits.float(), temperature)
                if not torch.isfinite(loss):
                    raise TeddyError(f"{desc}: non-finite loss at epoch {epoch + 1}, step {mb.step + 1}; "
                                     f"last good checkpoint kept at {ckpt_path}")
                # each share weighted by its size: the update is that of the whole batch's mean loss
                (loss * (len(mb.y) * world / mb.batch_size)).backward()
            if last:
                optimizer.step()
                scheduler.step()
            total_loss += loss.item() * len(mb.y)
            seen += len(mb.y)
        total_loss, seen = all_reduce_sum([total_loss, seen], device)
        metrics = {"epoch": epoch + 1, "loss": total_loss / max(1, seen), "lr": scheduler.get_last_lr()[0]}
        if eval_set is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            metrics["eval_accuracy"] = evaluate_accuracy(model, eval_set, device, amp=amp)
        history.append(metrics)
        bar.set_postfix({k: round(v, 4) for k, v in metrics.items() if k != "epoch"})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, metrics)
        if ckpt_path is not None and rank == 0 and ((epoch + 1) % every == 0 and epoch + 1 < epochs):
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                                        **rng_state(), "history": history, "epoch": epoch + 1,
                                        "settings": settings})
    return history


def remove_checkpoint(checkpoint_path) -> None:
    """Called once a stage's final outputs are written."""
    if checkpoint_path:
        for p in (Path(checkpoint_path), Path(str(checkpoint_path) + ".prev")):
            p.unlink(missing_ok=True)


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
