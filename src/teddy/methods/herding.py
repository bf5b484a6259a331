"""`herding`: a real-image selection baseline (Welling 2009; the exemplar selection of iCaRL).

For each class, greedily pick the real image whose addition brings the running mean of the
chosen images' features closest to the mean feature of the class candidates, IPC times.
Features are the penultimate activations (the input of the classifier layer) of the base
model, the single member of the recipe's pool, L2-normalised as in iCaRL so that no few
large-norm images dominate the mean. Candidates: `herding_candidates` random images per class
(null: every image of the class). Ties go to the lowest candidate index, so the subset is a
function of the seed and the candidate set alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from teddy.data import batches, draw_indices, stack_items
from teddy.errors import TeddyError
from teddy.methods.base import Distilled, DistillTask, real_indices_per_class, single_pool_model
from teddy.methods.registry import register_method
from teddy.pool import classifier_layer


@torch.no_grad()
def penultimate_features(model: torch.nn.Module, dataset, num_classes: int, device: torch.device,
                         batch_size: int = 500) -> torch.Tensor:
    """The classifier layer's inputs over `dataset`, flattened, in eval mode."""
    captured = []
    handle = classifier_layer(model, num_classes).register_forward_pre_hook(
        lambda module, inputs: captured.append(inputs[0].flatten(1).float().cpu()))
    try:
        model.eval()
        for x, _ in batches(dataset, batch_size, False, None, device):
            model(x)
    finally:
        handle.remove()
    return torch.cat(captured)


def herd(features: torch.Tensor, count: int) -> list[int]:
    """Indices (into `features`) of `count` rows chosen greedily so that their running mean
    tracks the mean of all rows."""
    target = features.mean(0)
    chosen, running_sum = [], torch.zeros_like(target)
    available = torch.ones(features.shape[0], dtype=torch.bool)
    for k in range(1, count + 1):
        distance = (target - (running_sum + features) / k).norm(dim=1)
        distance[~available] = float("inf")
        i = int(torch.argmin(distance))  # first minimum: deterministic ties
        chosen.append(i)
        available[i] = False
        running_sum += features[i]
    return chosen


# the recipe keys only herding reads (its part of the config schema)
RECIPE_KEYS = {
    "herding_candidates": {"type": ["integer", "null"], "minimum": 1, "description": "herding: random real candidates per class (null: all)"},
}

@register_method("herding", recipe_keys=RECIPE_KEYS, per_batch=False, defaults={"herding_candidates": None})
def distill(task: DistillTask) -> Distilled:
    per_class = real_indices_per_class(task)
    model = single_pool_model(task, "herding")
    cap = task.recipe["herding_candidates"]
    if cap is not None and int(cap) < task.ipc:
        raise TeddyError(f"herding_candidates={cap} is below IPC {task.ipc} (recipe key herding_candidates)")
    generator = torch.Generator().manual_seed(task.seed)
    selected = []
    for idx in per_class:
        if cap is not None:
            idx = draw_indices(idx, int(cap), generator).sort().values
        features = F.normalize(penultimate_features(model, task.real.subset(idx), task.info.num_classes,
                                                    task.device), dim=1)
        selected.append(idx[herd(features, task.ipc)])
    images, labels = stack_items(task.real, torch.cat(selected))
    return Distilled(images, labels, {"selected": int(labels.numel()), "candidates_per_class": cap})
