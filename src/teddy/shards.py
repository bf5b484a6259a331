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


def recipe_shards(recipe: dict, ipc: int, classes: int, batches_per_shard) -> list[range]:
    """The shards (ranges of batch indices) of one method recipe at one IPC, for a dataset of
    `classes` classes. A set-level method (teddy.methods.per_batch false: herding, whole-set
    selections) is one shard holding the whole set, written as one "batch" 0."""
    from teddy.methods import full_recipe, per_batch

    recipe = full_recipe(recipe)
    if not per_batch(recipe["method"]):
        return [range(1)]
    n = num_batches(int(classes), int(ipc), int(recipe["batch_size"]))  # every per-batch method defaults it
    return shard_ranges(n, batches_per_shard)


def method_ipcs(distill: dict, method_name: str) -> list[int]:
    """The IPCs a method's sets are made at: its own `ipc` list, else distill.ipc."""
    recipe = distill["methods"][method_name]
    return [int(i) for i in (recipe.get("ipc") or distill["ipc"])]


def method_eval_seeds(cfg: dict, method_name: str) -> list[int]:
    """The seeds a method's students are trained with: its own `eval_seeds`, else evaluate.seeds
    (a deterministic selection such as herding varies only with the student's seed)."""
    recipe = cfg["distill"]["methods"][method_name]
    return [int(s) for s in (recipe.get("eval_seeds") or cfg["evaluate"]["seeds"])]


def eval_cell(method, ipc, arch, protocol, seed) -> str:
    """One student's cell as a relative path, method/ipc<N>/<arch>/<protocol>/seed<S>: the one
    spelling behind its result, log and benchmark files (pass wildcard strings such as "{method}"
    for the rule's patterns)."""
    return f"{method}/ipc{ipc}/{arch}/{protocol}/seed{seed}"


def eval_result_path(results_dir, method, ipc, arch, protocol, seed) -> str:
    """Where a student's evaluation result is written: the rule's output, the workflow's targets
    and the reporting scripts all call this."""
    return f"{results_dir}/eval/{eval_cell(method, ipc, arch, protocol, seed)}.json"


def method_shards(cfg: dict, method_name: str, ipc: int, classes: int) -> list[range]:
    """recipe_shards of one (method, IPC) of the config."""
    return recipe_shards(cfg["distill"]["methods"][method_name], ipc, classes, cfg["distill"].get("batches_per_shard"))


def shard_count(cfg: dict, method_name: str, ipc: int) -> int:
    """How many distill jobs the workflow makes for one (method, IPC), known when it loads (the
    class count is read only when distill.batches_per_shard asks for more than one shard)."""
    from teddy.methods import per_batch

    if cfg["distill"].get("batches_per_shard") is None or \
            not per_batch(cfg["distill"]["methods"][method_name]["method"]):
        return 1
    return len(method_shards(cfg, method_name, ipc, num_classes(cfg["dataset"])))


def num_classes(dataset_cfg: dict) -> int:
    """The class count, known when the workflow loads (a class-folder dataset's normalisation file,
    which dataset_info may need for mean/std, does not exist yet then)."""
    from teddy.data import dataset_info
    from teddy.image_folder import class_folders, is_folder_dataset

    return len(class_folders(dataset_cfg)) if is_folder_dataset(dataset_cfg) else dataset_info(dataset_cfg).num_classes
