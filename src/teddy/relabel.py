"""Stored soft labels, FKD style (METHOD.md section 4, "Relabel").

`precompute_soft_labels` replays the batches a student run would draw (the shuffled order of
each epoch, then one augmentation per batch, from the same seeded generator as `train_model`)
and records, for every epoch and batch, the batch indices, the augmentation parameters and the
teacher's logits on the augmented batch. `train_model(..., soft_label_store=store)` then
rebuilds exactly those augmented batches and uses the stored logits as KD targets, so a student
trained from the store never needs the teacher and sees what the online-KD student sees.

File layout (torch.save of a dict): format_version, seed, epochs, batch_size, augment,
num_images, images_sha256 (of the distilled images, to refuse a store made for another set),
logits_dtype, batches[epoch][step] = {indices, augment, logits}.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from teddy.data import apply_augment, sample_augment_params
from teddy.errors import TeddyError

STORE_FORMAT_VERSION = 1


def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def epoch_batches(num_images: int, batch_size: int, image_size: int, aug_cfg: dict, generator: torch.Generator):
    """(indices, augment params) of one epoch, drawn in the order `train_model` draws them for an
    in-memory set: the epoch's permutation first (`teddy.data.batches`), then one augmentation
    per batch (`teddy.data.augment`)."""
    order = torch.randperm(num_images, generator=generator)
    for start in range(0, num_images, batch_size):
        idx = order[start:start + batch_size]
        params = sample_augment_params(len(idx), image_size, aug_cfg, generator) if aug_cfg else {}
        yield idx, params


@torch.no_grad()
def precompute_soft_labels(images: torch.Tensor, teacher: nn.Module, recipe: dict, seed: int,
                           device: torch.device, logits_dtype: torch.dtype = torch.float16) -> dict:
    """The store for a student trained on `images` with `recipe` (epochs, batch_size, augment)
    and `seed`. Teacher in eval mode, full precision; logits kept in `logits_dtype`."""
    epochs, batch_size = int(recipe["epochs"]), int(recipe["batch_size"])
    aug_cfg = recipe.get("augment") or {}
    teacher = teacher.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    plan = []
    for _ in range(epochs):
        epoch = []
        for idx, params in epoch_batches(len(images), batch_size, images.shape[-1], aug_cfg, generator):
            x = images[idx].to(device)
            if params:
                x = apply_augment(x, params)
            epoch.append({"indices": idx, "augment": params, "logits": teacher(x).to(logits_dtype).cpu()})
        plan.append(epoch)
    return {"format_version": STORE_FORMAT_VERSION, "seed": int(seed), "epochs": epochs, "batch_size": batch_size,
            "augment": dict(aug_cfg), "num_images": len(images), "images_sha256": images_digest(images),
            "logits_dtype": str(logits_dtype), "batches": plan}


def check_store(store: dict, images: torch.Tensor, recipe: dict, seed: int) -> None:
    """A store serves one student run only: same distilled images, recipe and seed."""
    if not isinstance(store, dict) or store.get("format_version") != STORE_FORMAT_VERSION:
        raise TeddyError("not a soft-label store of this version (rule relabel writes them)")
    expected = {"seed": (int(seed), "evaluate.seeds"),
                "epochs": (int(recipe["epochs"]), "evaluate.recipe.epochs"),
                "batch_size": (int(recipe["batch_size"]), "evaluate.recipe.batch_size"),
                "augment": (dict(recipe.get("augment") or {}), "evaluate.recipe.augment"),
                "num_images": (len(images), "the distilled set")}
    for key, (value, config_key) in expected.items():
        if store.get(key) != value:
            raise TeddyError(f"soft-label store has {key}={store.get(key)!r} but the student run has {value!r} "
                             f"({config_key}); rerun rule relabel")
    if store.get("images_sha256") != images_digest(images):
        raise TeddyError("soft-label store was made for other distilled images; rerun rule relabel")


def stored_batches(store: dict, images: torch.Tensor, targets: torch.Tensor, epoch: int, device: torch.device):
    """(augmented x, y, teacher logits) of one epoch, rebuilt from the store."""
    for entry in store["batches"][epoch]:
        idx = entry["indices"]
        x = images[idx].to(device, non_blocking=True)
        if entry["augment"]:
            x = apply_augment(x, entry["augment"])
        yield x, targets[idx].to(device, non_blocking=True), entry["logits"].to(device).float()
