"""Resumable state, shared by the two resumable loops (`teddy.train.fit` and the synthetic-image
loop `teddy.methods.base.optimise_synthetic`).

A checkpoint is written atomically and the previous one is kept beside it as `<path>.prev`
until the new one is on disk. Loading takes the newest usable one: `path`, else `.prev`, else
a clean start; a truncated or corrupt file, or one written under other `settings` (the config
changed since), is skipped with a warning. The global torch RNG (CPU, and every CUDA device
when present), the loop's own generator, optimiser and schedule are saved and restored with
the loop's own state, so a resumed run ends with the numbers of an uninterrupted one. A
non-finite loss stops the loop with one line naming where it happened and the checkpoint kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from teddy.errors import TeddyError
from teddy.io import load_torch, save_torch


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


def remove_checkpoint(checkpoint_path) -> None:
    """Called once a stage's final outputs are written."""
    if checkpoint_path:
        for p in (Path(checkpoint_path), Path(str(checkpoint_path) + ".prev")):
            p.unlink(missing_ok=True)


def rng_state() -> dict:
    """Global torch RNG state (CPU, and every CUDA device when present) for a checkpoint."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


class Resumable:
    """The checkpoint of one resumable loop: where it lives (None: not checkpointed), the
    settings a checkpoint must have been written under to be resumed, and the loop state every
    loop has (optimiser, schedule, its own generator, the global RNG, the history). A loop adds
    its own entries (model weights or images, its position) as keyword arguments of `save` and
    reads them back from the dict `load` returns."""

    def __init__(self, path, settings: dict, what: str = "training checkpoint"):
        self.path = Path(path) if path else None
        self.settings = settings
        self.what = what

    def load(self, optimizer, scheduler, generator) -> dict | None:
        """Restore optimiser, schedule, generator (or list of generators: stacked synthetic
        batches) and global RNG from the newest usable checkpoint and return it (for the loop's
        own entries); None: start clean."""
        if self.path is None:
            return None
        state = load_checkpoint(self.path, self.what, self.settings)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if isinstance(generator, (list, tuple)):
                for g, saved in zip(generator, state["generator"]):
                    g.set_state(saved)
            else:
                generator.set_state(state["generator"])
            set_rng_state(state)
        return state

    def save(self, optimizer, scheduler, generator, history: list, **own) -> None:
        if self.path is None:
            return
        generators = [g.get_state() for g in generator] if isinstance(generator, (list, tuple)) else \
            generator.get_state()
        save_checkpoint(self.path, {**own, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "generator": generators, **rng_state(), "history": history,
                                    "settings": self.settings})

    def check_finite(self, loss, desc: str, where: str) -> None:
        """The NaN guard: a non-finite loss stops the loop, naming where and the checkpoint kept."""
        if not torch.isfinite(loss):
            raise TeddyError(f"{desc}: non-finite loss at {where}; last good checkpoint kept at {self.path}")
