"""Atomic writes, JSON and torch files with one-line errors (the distilled set: teddy.distilled_set)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from teddy.errors import TeddyError

def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted job therefore never leaves a half-written output that Snakemake would
    take as complete (only a hidden `.<name>.*.tmp` file, removed when the block fails). The file
    ends with the mode an ordinary `open()` gives under the current umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode open() would have given it,
        # so a group-shared results folder stays readable by the group and by web servers
        os.chmod(tmp, 0o666 & ~current_umask())
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
