"""The weak-model pool (the Teddy paper's prior and post generators, plus single and fresh):
members, manifest, sampling policies."""

from __future__ import annotations

import copy
import csv
import io as _io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from teddy.augment import augment
from teddy.data import stack_items
from teddy.datasets import dataset_info, load_split
from teddy.errors import TeddyError
from teddy.io import load_torch, save_text, save_torch
from teddy.machine import Machine, dataset_cfg, resolve_device
from teddy.models import count_parameters, model_from_spec
from teddy.recipes import make_optimizer, trained_epochs
from teddy.train import fit

MANIFEST_COLUMNS = ["member", "generator", "made_from", "finetune_epochs", "test_accuracy", "parameters", "flops"]


# --- model files ---------------------------------------------------------------------------

def save_model(path, model: nn.Module, meta: dict) -> None:
    """A model file holds the whole module (pruned members change shape) and its metadata."""
    save_torch({"model": model.cpu().eval(), "meta": meta}, path)


def load_model(path, what: str = "model") -> tuple[nn.Module, dict]:
    payload = load_torch(path, what=what)
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), nn.Module):
        raise TeddyError(f"{what} file {path} does not hold a model")
    return payload["model"], payload.get("meta", {})


# --- member names (shared with the Snakemake rules) -----------------------------------------

def member_names(pool_cfg: dict) -> list[str]:
    generator = pool_cfg.get("generator")
    if generator == "prior":
        if pool_cfg.get("epochs"):
            names = [f"epoch{int(e)}" for e in pool_cfg["epochs"]]
        elif pool_cfg.get("target_accuracies"):
            names = [f"acc{float(a):g}" for a in pool_cfg["target_accuracies"]]
        else:
            raise TeddyError("a prior pool needs 'epochs' or 'target_accuracies'")
    elif generator == "single":
        names = ["base"]
    elif generator == "post":
        ratios = pool_cfg.get("ratios") or []
        for r in ratios:
            if not 0 < float(r) < 1:
                raise TeddyError(f"pruning ratio {r} outside (0, 1) (config key pools.*.ratios)")
        names = [f"prune{float(r):g}" for r in ratios]
    elif generator == "fresh":
        return []  # no members on disk: distillation trains a new model every iteration
    else:
        raise TeddyError(f"unknown pool generator '{generator}' (config key pools.*.generator)")
    if not names:
        raise TeddyError("empty pool: no members configured (config keys pools.*.epochs / target_accuracies / ratios)")
    if len(set(names)) != len(names):
        raise TeddyError(f"pool lists a member twice: {names} (config key pools.*)")
    return names


def choose_snapshot(member: str, snapshot_accuracies: dict[int, float]) -> int:
    """The base-training epoch a prior member is taken from: `epochN` names it; `accA` picks
    the snapshot whose validation accuracy is closest to A."""
    if member.startswith("epoch"):
        epoch = int(member[5:])
        if epoch not in snapshot_accuracies:
            raise TeddyError(f"snapshot epoch {epoch} not in the base run (snapshots: {sorted(snapshot_accuracies)})")
        return epoch
    if member.startswith("acc"):
        target = float(member[3:])
        return min(snapshot_accuracies, key=lambda e: (abs(snapshot_accuracies[e] - target), e))
    raise TeddyError(f"not a prior pool member name: {member}")


# --- post members: structural channel pruning ----------------------------------------------

def classifier_layer(model: nn.Module, num_classes: int) -> nn.Module:
    """The output layer (the last Linear or Conv with `num_classes` outputs): never pruned,
    so a pruned member still predicts every class."""
    outputs = [m for m in model.modules()
               if (isinstance(m, nn.Linear) and m.out_features == num_classes)
               or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]
    if not outputs:
        raise TeddyError(f"cannot find the {num_classes}-way output layer of {type(model).__name__} to keep unpruned")
    return outputs[-1]


def prune_channels(model: nn.Module, ratio: float, input_shape, num_classes: int) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer (L2 filter magnitude), in place,
    with Torch-Pruning's dependency graph so residual and depthwise couplings stay consistent."""
    import torch_pruning as tp  # imported here: only post pools need it

    if not 0 < ratio < 1:
        raise TeddyError(f"pruning ratio {ratio} outside (0, 1) (config key pools.*.ratios)")
    model = model.cpu().eval()
    before = count_parameters(model)
    example = torch.zeros(1, *input_shape)
    keep_whole = [classifier_layer(model, num_classes)]
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=keep_whole)
        pruner.step()
        with torch.no_grad():
            model(example)
    except Exception as exc:  # Torch-Pruning's own failures: tracing, unsupported layers
        raise TeddyError(f"Torch-Pruning cannot prune {type(model).__name__}: {exc} (config key base.arch)") from None
    if count_parameters(model) >= before:
        raise TeddyError(f"Torch-Pruning found no prunable channel in {type(model).__name__} "
                         f"(config key base.arch); use a prior pool for it")
    return model


# --- measurements ---------------------------------------------------------------------------

def count_flops(model: nn.Module, input_shape) -> int:
    """Forward FLOPs of one input, counted by torch's own FLOP counter."""
    model = model.eval()
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def manifest_row(member: str, generator: str, made_from: str, finetune_epochs: int, test_accuracy: float,
                 model: nn.Module, input_shape) -> dict:
    return {"member": member, "generator": generator, "made_from": made_from, "finetune_epochs": finetune_epochs,
            "test_accuracy": round(float(test_accuracy), 5), "parameters": count_parameters(model),
            "flops": count_flops(model, input_shape)}


def write_manifest(rows: list[dict], path) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    save_text(buf.getvalue(), path)


def read_manifest(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TeddyError(f"pool manifest not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise TeddyError(f"empty pool: manifest {path} lists no member")
    return rows


# --- sampling during distillation ------------------------------------------------------------

def freeze(model: nn.Module) -> nn.Module:
    """Pool models are matched against, never trained: eval mode, no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass
class WeakPool:
    """Models cached once; `sample(iteration, generator)` picks the one to match this step."""

    members: list[nn.Module]
    names: list[str]
    policy: str = "uniform"

    def __post_init__(self):
        if not self.members:
            raise TeddyError("empty pool: no member to sample from")
        if self.policy not in ("uniform", "round_robin"):
            raise TeddyError(f"unknown sampling policy '{self.policy}' (recipe key sampling)")
        for m in self.members:
            freeze(m)

    def __len__(self):
        return len(self.members)

    def index(self, iteration: int, generator: torch.Generator) -> int:
        if self.policy == "round_robin":
            return iteration % len(self.members)
        return int(torch.randint(len(self.members), (1,), generator=generator))

    def sample(self, iteration: int, generator: torch.Generator) -> nn.Module:
        return self.members[self.index(iteration, generator)]

    def to(self, device):
        for m in self.members:
            m.to(device)
        return self


def load_pool(member_paths, policy: str = "uniform", size: int | None = None) -> WeakPool:
    paths = list(member_paths)[: size or None]
    members, names = [], []
    for p in paths:
        model, _ = load_model(p, what="pool member")
        members.append(model)
        names.append(Path(p).stem)
    return WeakPool(members, names, policy)


class FreshModelPool:
    """The classic alternative the pool replaces: every outer iteration, a new model from random
    initialisation trained `steps` SGD steps on real batches, then matched against. Same
    `sample(iteration, generator)` interface as WeakPool; its training time is distillation time."""

    def __init__(self, build: Callable[[], nn.Module], real, recipe: dict, steps: int = 20,
                 device: torch.device | str = "cpu"):
        if int(steps) < 1:
            raise TeddyError(f"fresh_steps must be >= 1, got {steps} (config key pools.*.fresh_steps)")
        self.build, self.real, self.recipe, self.steps = build, real, recipe, int(steps)
        self.device = torch.device(device)
        self.names = ["fresh"]

    def __len__(self):
        return 1

    def to(self, device):
        self.device = torch.device(device)
        return self

    def sample(self, iteration: int, generator: torch.Generator) -> nn.Module:
        # the seed comes from the distillation generator, so a resumed run rebuilds the same models
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        batch_size = int(self.recipe.get("batch_size", 256))
        aug_cfg = self.recipe.get("augment") or {}
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(seed)
            model = self.build().to(self.device).train()
        optimizer = make_optimizer(model.parameters(), self.recipe)
        data_rng = torch.Generator().manual_seed(seed)
        # a fixed number of steps at constant lr (train.fit counts epochs over a whole set)
        for _ in range(self.steps):
            idx = torch.randint(len(self.real), (batch_size,), generator=data_rng)
            x, y = stack_items(self.real, idx)
            x, y = x.to(self.device), y.to(self.device)
            if aug_cfg:
                x = augment(x, aug_cfg, data_rng)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return freeze(model)


def finetune_recipe(pool: dict, base_recipe: dict) -> dict:
    """`pools.<name>.finetune`, else one epoch of the base recipe without warm-up."""
    recipe = pool.get("finetune") or {**base_recipe, "epochs": 1, "warmup_epochs": 0}
    return {"eval_every": 0, **recipe}


def train_snapshots(settings: dict, machine: Machine, recipe: dict, wanted_epochs, snapshot_dir, checkpoint,
                    desc: str):
    """Train settings' model from scratch on the real training set with `recipe`, keeping a
    snapshot of each wanted epoch (all when None, none when empty); returns (model, history, snapshots, seconds).
    The base run (train_base) and a prior pool's own run (train_prior) both train this way."""
    data = dataset_cfg(settings, machine)
    device = resolve_device(machine.device)
    train_set, val_set = load_split(data, "train"), load_split(data, "val")
    seed = int(settings["base"]["seed"])
    info = dataset_info(data)
    model = model_from_spec(settings["model"], info, seed=seed)
    recipe = {"eval_every": 1, **recipe}
    wanted = set(range(1, trained_epochs(recipe) + 1) if wanted_epochs is None else wanted_epochs)
    snapshot_dir = Path(snapshot_dir)

    def keep_snapshot(epoch, model, metrics):
        if epoch in wanted:
            save_model(snapshot_dir / f"epoch{epoch}.pt", copy.deepcopy(model),
                       {"epoch": epoch, "val_accuracy": metrics.get("eval_accuracy")})

    t0 = time.perf_counter()
    history = fit(model, train_set, recipe, device, seed=seed, eval_set=val_set,
                          on_epoch_end=keep_snapshot, checkpoint_path=checkpoint, desc=desc, info=info)
    snapshots = {str(h["epoch"]): {"path": str(snapshot_dir / f"epoch{h['epoch']}.pt"),
                                   "val_accuracy": h["eval_accuracy"]} for h in history if h["epoch"] in wanted}
    return model, history, snapshots, time.perf_counter() - t0
