"""`teddy`: Taylor-approximated matching against models sampled from a weak pool.

matching: statistics (METHOD.md section 2): CE + alpha * weighted BN-statistics distance at a
pool model sampled each iteration. Nothing is unrolled, so memory is one forward/backward.
"""

import torch

from teddy.errors import TeddyError
from teddy.losses import bn_statistics_loss
from teddy.methods.base import Distilled, DistillTask, initial_images, optimise_synthetic


def statistics_loss_fn(recipe: dict):
    alpha = float(recipe.get("alpha", 1.0))
    first_bn_weight = float(recipe.get("first_bn_weight", 10.0))
    ce_weight = float(recipe.get("ce_weight", 1.0))

    def loss_fn(model, x, y, iteration):
        return bn_statistics_loss(model, x, y, alpha=alpha, first_bn_weight=first_bn_weight, ce_weight=ce_weight)
    return loss_fn


MATCHING = {"statistics": statistics_loss_fn}


def distill(task: DistillTask) -> Distilled:
    matching = task.recipe.get("matching", "statistics")
    if matching not in MATCHING:
        raise TeddyError(f"unknown matching form '{matching}' (recipe key matching); known: {sorted(MATCHING)}")
    if task.pool is None:
        raise TeddyError("teddy needs a pool (recipe key pool)")
    generator = torch.Generator().manual_seed(task.seed)
    torch.manual_seed(task.seed)
    images, labels = initial_images(task, generator)
    task.pool.to(task.device)
    return optimise_synthetic(task, images, labels, MATCHING[matching](task.recipe), generator,
                              desc=f"teddy-{matching} ipc{task.ipc}")
