"""`random`: IPC random real images per class, the floor every method must beat."""

import torch

from teddy.methods.base import Distilled, DistillTask, select_real


def distill(task: DistillTask) -> Distilled:
    images, labels = select_real(task, torch.Generator().manual_seed(task.seed))
    return Distilled(images, labels, {"selected": int(labels.numel())})
