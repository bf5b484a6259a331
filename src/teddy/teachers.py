"""A kd protocol's teacher: the base model, or an ensemble of base models of several
architectures (protocol key `teachers`), as G-VBSM and EDC relabel their ImageNet-1K sets
(docs/method.md section 7 g, h). The ensemble is one module, so online KD, the label
store and the ceiling take it as they take a single teacher."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from teddy.errors import TeddyError
from teddy.pool import load_model

COMBINE = ("mean", "rescaled_mean")


class TeacherEnsemble(nn.Module):
    """Several teachers as one: the mean of their logits. `rescaled_mean` first scales each
    teacher's logits of the batch to the teachers' mean Frobenius norm over that batch, so that no
    teacher dominates by scale (G-VBSM generate_soft_label_with_db.py `save`); with gradient
    accumulation the batch is the micro-batch the teacher sees."""

    def __init__(self, teachers: list[nn.Module], combine: str = "mean"):
        super().__init__()
        if combine not in COMBINE:
            raise TeddyError(f"unknown teachers.combine '{combine}' (known: {', '.join(COMBINE)})")
        self.teachers, self.combine = nn.ModuleList(teachers), combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([teacher(x).float() for teacher in self.teachers])  # teachers x batch x classes
        if self.combine == "rescaled_mean":
            norms = torch.linalg.vector_norm(logits, dim=(1, 2), keepdim=True)
            logits = logits / norms * norms.mean(0, keepdim=True)
        return logits.mean(0)


def load_teacher(paths, teachers: dict | None = None) -> nn.Module:
    """The model of each path (rule train_base's model.pt files, in teachers.archs order): the one
    model itself, or their ensemble combined as `teachers` says."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise TeddyError("a kd protocol needs its teacher model file(s) (rule train_base)")
    if teachers and len(paths) != len(teachers["archs"]):
        raise TeddyError(f"the teacher ensemble {teachers['archs']} (protocol key teachers.archs) needs one model "
                         f"file each, got {len(paths)}")
    models = []
    for i, path in enumerate(paths):
        model, meta = load_model(path, what="teacher (base model)")
        if teachers and meta.get("arch") not in (None, teachers["archs"][i]):
            raise TeddyError(f"teacher file {path} holds a '{meta['arch']}', but teachers.archs[{i}] is "
                             f"'{teachers['archs'][i]}'")
        models.append(model)
    if len(models) == 1 and not teachers:
        return models[0]
    return TeacherEnsemble(models, (teachers or {}).get("combine", "mean"))
