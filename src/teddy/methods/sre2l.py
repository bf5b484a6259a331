"""`sre2l` (Yin et al., NeurIPS 2023): statistics matching against the one strong base model
(the recipe's pool must be a `single` pool), from noise. The loss is teddy's statistics loss,
so sre2l and teddy differ only in what they match (one strong model vs a weak pool) and in
SRe2L's published ImageNet-1K recipe, used here as defaults (docs/method.md sections 2 and 4):
Adam betas 0.5/0.9, lr 0.25, cosine schedule, BN weight 10 on the first layer and 1 on the
rest, alpha 0.01, 4000 iterations, batch 100, random resized crop (scale 0.08-1) and flip.
Every default can be overridden in the recipe.
"""

from teddy.methods.base import HARNESS_KEYS, Distilled, DistillTask, run_batches, single_pool_model
from teddy.methods.registry import register_method
from teddy.methods.teddy import statistics_loss_fn

# the recipe keys only sre2l reads (its part of the config schema)
RECIPE_KEYS = {
    "alpha": {"type": "number", "minimum": 0},
    "first_bn_weight": {"type": "number", "minimum": 0},
    "ce_weight": {"type": "number", "minimum": 0},
}

@register_method("sre2l", recipe_keys={**HARNESS_KEYS, **RECIPE_KEYS}, per_batch=True, defaults={
    "init": "noise", "lr": 0.25, "betas": [0.5, 0.9], "first_bn_weight": 10.0, "alpha": 0.01, "ce_weight": 1.0,
    "iterations": 4000, "batch_size": 100, "augment": {"crop": True, "crop_scale": [0.08, 1.0], "flip": True}})
def distill(task: DistillTask) -> Distilled:
    single_pool_model(task, "sre2l")
    result = run_batches(task, statistics_loss_fn(task.recipe), desc=f"sre2l ipc{task.ipc}")
    result.log["recipe"] = task.recipe  # the defaults filled in, for the log
    return result
