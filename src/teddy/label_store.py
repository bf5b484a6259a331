"""Stored soft labels, FKD style (the relabel stage; evaluate.labels: stored).

`write_label_store` draws, epoch by epoch, the plan a student run of that seed would draw
(teddy.student_data.plan_epoch: image order, per-image crop boxes and flips, shifts, CutMix or
Mixup), runs the teacher on the very same augmented batches, and writes one file per epoch: the
plan plus the teacher's top-k logits (fp16 values, int16/int32 class indices). A student run
from the store (`LabelStore`) reads one epoch file at a time, so its memory holds one epoch's
labels at most, and never loads the teacher.

Layout of a store (<dir>/meta.json is written last and names everything):
    meta.json          format_version, set_hash, seed, epochs, batch_size, augment, chunks,
                       num_images, num_classes, keep_topk, logits_dtype
    epoch0000.pt ...   torch.save of the plan dict of that epoch + "values" [N, k] and
                       "classes" [N, k] + "set_hash" and "epoch"

Disk size (measured against this in tests and docs/eval_scale.md): per epoch and image,
    k * (b_value + b_class) + 4 (order) + 1 (flip) + 16 (crop box, with crop) + 4 (mix partner)
bytes, with b_value = 2 (fp16), b_class = 2 when classes <= 32767 else 4; plus a per-epoch
overhead of a few kB (torch.save container, per-batch shift and mix parameters). The DC and DSA
benchmark augmentations (augment.dc_augment, augment.dsa) are plan fields like the others and
are stored with it: + 5 bytes per image with dc_augment (operation, two int16 arguments; its
noise as one seed per batch), + 16 with dsa (four float32 parameters; the family per batch),
+ 2 x factor with shuffle_patches (two int8 strip orders); predicted_bytes_per_epoch leaves them
out.

Followed: FKD (Shen & Xing, "A Fast Knowledge Distillation Framework") as used by SRe2L's
relabel step (VILA-Lab/SRe2L): crop coordinates, flip and mix parameters saved with the
soft labels per epoch and replayed by the student; the top-k truncation of the logits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from teddy.data import DatasetInfo
from teddy.errors import TeddyError
from teddy.io import load_json, load_torch, save_json, save_torch
from teddy.recipes import autocast_for, compiled, trained_epochs
from teddy.student_data import StudentData, plan_epoch

# 3: streamed PNG sets are cropped like in-memory ones (roi_align): older stores of them no longer match
STORE_FORMAT_VERSION = 3
MISSING_LOGIT = -1.0e4  # logits outside the top k: probability 0 after softmax, still finite in KL


def class_dtype(num_classes: int) -> torch.dtype:
    return torch.int16 if num_classes <= 32767 else torch.int32


def predicted_bytes_per_epoch(num_images: int, num_classes: int, keep_topk: int, crop: bool, mix: bool,
                              logits_dtype: torch.dtype = torch.float16) -> int:
    """The README's formula (without the per-epoch container overhead)."""
    value_bytes = torch.empty(0, dtype=logits_dtype).element_size()
    class_bytes = torch.empty(0, dtype=class_dtype(num_classes)).element_size()
    per_image = keep_topk * (value_bytes + class_bytes) + 4 + 1 + (16 if crop else 0) + (4 if mix else 0)
    return num_images * per_image


def epoch_path(store_dir, epoch: int) -> Path:
    return Path(store_dir) / f"epoch{epoch:04d}.pt"


def store_settings(recipe: dict, seed: int, chunks: int, num_images: int, num_classes: int, keep_topk: int) -> dict:
    """What a store must share with the student run that reads it (the epochs it trains)."""
    return {"seed": int(seed), "epochs": trained_epochs(recipe), "batch_size": int(recipe["batch_size"]),
            "augment": dict(recipe.get("augment") or {}), "chunks": int(chunks), "num_images": int(num_images),
            "num_classes": int(num_classes), "keep_topk": int(keep_topk)}


@torch.no_grad()
def write_label_store(meta_path, dataset, teacher: nn.Module, recipe: dict, seed: int, device: torch.device,
                      info: DatasetInfo, *, set_hash: str, keep_topk: int | None = None, chunks: int = 1,
                      logits_dtype: torch.dtype = torch.float16) -> dict:
    """Write the store of one student seed; `info` gives the classes, the crop size and (for
    images stored as pixels) the normalisation; `chunks` = processes x accumulation steps of the
    student runs that will read it (CutMix/Mixup partners are drawn within chunks). The set's
    DataLoader workers are its own `num_workers` (teddy.data.FolderSubset), as in train.fit."""
    num_classes, image_size, mean, std = info.num_classes, info.image_size, info.mean, info.std
    num_workers = getattr(dataset, "num_workers", 0)
    keep_topk = int(keep_topk or num_classes)
    if keep_topk > num_classes:
        raise TeddyError(f"evaluate.keep_topk={keep_topk} exceeds the {num_classes} classes")
    store_dir = Path(meta_path).parent
    settings = store_settings(recipe, seed, chunks, len(dataset), num_classes, keep_topk)
    teacher = teacher.to(device).eval()
    # as the online-KD student runs its teacher: channels-last, bf16 autocast, compiled (CUDA only)
    channels_last = device.type == "cuda" and bool(recipe.get("channels_last"))
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    forward = compiled(teacher, recipe, device)
    amp = bool(recipe.get("amp", False))
    generator = torch.Generator().manual_seed(int(seed))
    data = StudentData(dataset, image_size, device, mean=mean, std=std, num_workers=num_workers, accumulate=chunks)
    aug_cfg = recipe.get("augment") or {}
    for epoch in tqdm(range(settings["epochs"]), desc="relabel", file=sys.stderr, mininterval=5):
        plan = plan_epoch(len(dataset), settings["batch_size"], image_size, aug_cfg, generator, chunks)
        logits = []
        for mb in data.epoch(plan):
            x = mb.x.contiguous(memory_format=torch.channels_last) if channels_last else mb.x
            with autocast_for(device, amp):
                logits.append(forward(x).float())
        logits = torch.cat(logits) if logits else torch.zeros(0, num_classes)
        values, classes = logits.topk(keep_topk, dim=1)
        save_torch({**plan, "values": values.to(logits_dtype).cpu(), "classes": classes.to(class_dtype(num_classes)).cpu(),
                    "set_hash": set_hash, "epoch": epoch}, epoch_path(store_dir, epoch))
    meta = {"format_version": STORE_FORMAT_VERSION, "set_hash": set_hash, "logits_dtype": str(logits_dtype),
            **settings}
    save_json(meta, meta_path)
    return meta


class LabelStore:
    """A written store, checked against the student run that reads it; epochs load one at a time."""

    def __init__(self, meta_path, *, set_hash: str, recipe: dict, seed: int, chunks: int, num_images: int,
                 num_classes: int, keep_topk: int | None = None):
        self.meta_path = Path(meta_path)
        self.meta = load_json(self.meta_path)
        if self.meta.get("format_version") != STORE_FORMAT_VERSION:
            raise TeddyError(f"{self.meta_path} is not a soft-label store of this version; rerun rule relabel")
        if self.meta.get("set_hash") != set_hash:
            raise TeddyError(f"soft-label store {self.meta_path} was made from another distilled set "
                             f"(hash mismatch); rerun rule relabel")
        expected = store_settings(recipe, seed, chunks, num_images, num_classes, keep_topk or num_classes)
        for key, value in expected.items():
            if self.meta.get(key) != value:
                raise TeddyError(f"soft-label store {self.meta_path} has {key}={self.meta.get(key)!r} but the "
                                 f"student run has {value!r} (evaluate section); rerun rule relabel")
        self.set_hash, self.num_classes = set_hash, int(num_classes)

    def epoch(self, epoch: int) -> dict:
        path = epoch_path(self.meta_path.parent, epoch)
        if not path.is_file():
            raise TeddyError(f"stored-label epoch file missing: {path}; rerun rule relabel")
        plan = load_torch(path, what="stored-label epoch file")
        if plan.get("set_hash") != self.set_hash or plan.get("epoch") != epoch:
            raise TeddyError(f"stored-label epoch file {path} belongs to another set or epoch; rerun rule relabel")
        return plan

    def logits(self, plan: dict, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Dense teacher logits of some plan positions (MISSING_LOGIT outside the top k)."""
        values, classes = plan["values"][positions].float(), plan["classes"][positions].long()
        if values.shape[1] == self.num_classes:
            dense = torch.empty(len(positions), self.num_classes).scatter_(1, classes, values)
        else:
            dense = torch.full((len(positions), self.num_classes), MISSING_LOGIT).scatter_(1, classes, values)
        return dense.to(device, non_blocking=True)
