"""How a distilled set is cut into synthetic batches, and the batches into shards (one job each).

A synthetic batch is a set of (class, index-in-class) slots of at most `batch_size` images,
each optimised on its own (fresh optimiser and schedule, its own seed). The cut follows the
peers' recover scripts (SRe2L's `data_synthesis.py`: an outer loop over the IPC index, its
`--ipc-start/--ipc-end` being their way of splitting work, and the classes in chunks of
`batch_size` within one index), generalised: when all classes fit in one batch, several whole
IPC indices share it (floor(batch_size / num_classes) of them), so a small set (Fashion-MNIST
IPC 10, batch 100) stays one class-mixed batch. Inside a batch the slots are class-major.

A shard is a contiguous range of batches (`distill.batches_per_shard`, null: all in one).
Every batch seeds from (seed, method name, IPC, batch index) through a stable hash, so the set
does not depend on how the batches are grouped into shards.
"""

from __future__ import annotations

import hashlib
import math

import torch

from teddy.errors import TeddyError


def batch_plan(num_classes: int, ipc: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(labels, index_in_class) of every synthetic batch, in batch order."""
    if ipc < 1:
        raise TeddyError(f"IPC must be >= 1, got {ipc} (config key distill.ipc)")
    if batch_size < 1:
        raise TeddyError(f"batch_size must be >= 1, got {batch_size} (recipe key batch_size)")
    plan = []
    if batch_size >= num_classes:
        per_batch = min(ipc, batch_size // num_classes)  # whole IPC indices sharing one batch
        for first in range(0, ipc, per_batch):
            js = range(first, min(ipc, first + per_batch))
            plan.append((torch.tensor([c for c in range(num_classes) for _ in js]),
                         torch.tensor([j for _ in range(num_classes) for j in js])))
    else:
        for j in range(ipc):
            for first in range(0, num_classes, batch_size):
                classes = torch.arange(first, min(num_classes, first + batch_size))
                plan.append((classes, torch.full_like(classes, j)))
    return plan


def num_batches(num_classes: int, ipc: int, batch_size: int) -> int:
    if batch_size >= num_classes:
        return math.ceil(ipc / min(ipc, batch_size // num_classes))
    return ipc * math.ceil(num_classes / batch_size)


def batch_seed(seed: int, name: str, ipc: int, batch: int) -> int:
    """A 63-bit seed from (seed, method name, IPC, batch index); stable across processes and
    Python versions (Python's hash() of a string is salted per process)."""
    digest = hashlib.sha256(f"{int(seed)}/{name}/{int(ipc)}/{int(batch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def shard_ranges(batches: int, batches_per_shard: int | None) -> list[range]:
    """Contiguous ranges of batch indices, one per shard (one shard when batches_per_shard is null)."""
    if batches_per_shard is None:
        return [range(batches)]
    if int(batches_per_shard) < 1:
        raise TeddyError(f"distill.batches_per_shard must be >= 1, got {batches_per_shard}")
    size = int(batches_per_shard)
    return [range(first, min(batches, first + size)) for first in range(0, batches, size)]


