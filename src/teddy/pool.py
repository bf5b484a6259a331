"""The weak-model pool (METHOD.md section 3): members, manifest, sampling policies."""

from __future__ import annotations

import csv
import io as _io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from teddy.errors import TeddyError
from teddy.io import load_torch, save_text, save_torch
from teddy.models import count_parameters

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
    else:
        raise TeddyError(f"unknown pool generator '{generator}' (config key pools.*.generator)")
    if not names:
        raise TeddyError("empty pool: no members configured")
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
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

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
