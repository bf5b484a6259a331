"""Atomic writes, checkpoints and the distilled-set file format."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from teddy.errors import TeddyError

DISTILLED_FORMAT_VERSION = 1


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted job therefore never leaves a half-written output that Snakemake would
    take as complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load with a one-line error for a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise TeddyError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated/corrupt zips
        raise TeddyError(f"corrupt or truncated {what}: {path} ({type(exc).__name__}: {exc})") from None


def save_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TeddyError(f"file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise TeddyError(f"corrupt JSON file: {path} ({exc})") from None


def save_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# --- distilled set -------------------------------------------------------------------

def save_distilled(path, images: torch.Tensor, labels: torch.Tensor, mean, std, class_names,
                   config: dict, extra: dict | None = None) -> None:
    """Write a distilled set; the format is documented in README ("Distilled-set format")."""
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"bad distilled set shapes: images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    payload = {
        "format_version": DISTILLED_FORMAT_VERSION,
        "images": images.detach().cpu().float().contiguous(),
        "labels": labels.detach().cpu().long().contiguous(),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "class_names": list(class_names),
        "config": config,
    }
    if extra:
        payload.update(extra)
    save_torch(payload, path)


def load_distilled(path) -> dict:
    payload = load_torch(path, what="distilled set")
    missing = {"images", "labels", "mean", "std", "class_names"} - set(payload)
    if missing:
        raise TeddyError(f"distilled set {path} lacks keys {sorted(missing)}")
    return payload
