"""`teddy`: Taylor-approximated matching against models sampled from a weak pool.

matching: statistics (docs/method.md section 2): CE + alpha * weighted BN-statistics distance at a
pool model sampled each iteration. Nothing is unrolled, so memory is one forward/backward.

matching: gradient (docs/method.md section 2): for the pool model drawn this iteration and every
class c present in the batch, D(grad_theta CE(f(A(S_c)), c), grad_theta CE(f(T_c), c)), D the
per-output-row cosine distance of `gradient_distance`, summed over classes. The real-data
gradients are computed once per (pool member, class) from `real_batch_per_class` real images
(default 64) before the loop, so the loop never reads the real set. Pool models stay in eval
mode on both sides: BatchNorm then normalises with the member's running (real-data) statistics,
so a gradient does not depend on the batch size or class mix (the real side uses 64 images of
one class, the synthetic side IPC), and the cached gradients are those of the frozen function
the pool holds.

With a `fresh` pool (a new model trained from random init at every iteration: DC's way of drawing
models, the control for the cached pool) nothing can be cached: each iteration computes the real
gradient of every class in the batch at the drawn model, from `real_batch_per_class` real images.

Recipe keys: matching, alpha, first_bn_weight, ce_weight (statistics); real_batch_per_class,
gradient_cache (gradient: a file to keep the real gradients in; reused when present, and then
it must match the pool; unused with a fresh pool).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from teddy.data import class_indices, draw_indices, stack_items
from teddy.errors import TeddyError
from teddy.io import load_torch, save_torch
from teddy.losses import bn_statistics_loss, bn_statistics_losses, gradient_distance
from teddy.methods.base import HARNESS_DEFAULTS, HARNESS_KEYS, Distilled, DistillTask, run_batches
from teddy.methods.registry import register_method

# teddy's own recipe defaults (registered with the harness's below)
DEFAULTS = {"matching": "statistics", "alpha": 1.0, "first_bn_weight": 10.0, "ce_weight": 1.0,
            "real_batch_per_class": 64}


def statistics_loss_fn(recipe: dict):
    alpha = float(recipe.get("alpha", DEFAULTS["alpha"]))
    first_bn_weight = float(recipe.get("first_bn_weight", DEFAULTS["first_bn_weight"]))
    ce_weight = float(recipe.get("ce_weight", DEFAULTS["ce_weight"]))

    def loss_fn(model, x, y, iteration):
        return bn_statistics_loss(model, x, y, alpha=alpha, first_bn_weight=first_bn_weight, ce_weight=ce_weight)

    def stacked(model, xs, ys, iteration):  # several batches through one forward (base.optimise_stack)
        return bn_statistics_losses(model, xs, ys, alpha=alpha, first_bn_weight=first_bn_weight, ce_weight=ce_weight)
    loss_fn.stacked = stacked
    return loss_fn


# --- gradient matching ------------------------------------------------------------------------

def parameter_shapes(model: torch.nn.Module) -> list[list[int]]:
    return [list(p.shape) for p in model.parameters()]


def class_gradients(model: torch.nn.Module, x: torch.Tensor, label: int, create_graph: bool) -> tuple:
    """grad_theta CE(model(x), label) for every parameter of `model`, in eval mode. The pool's
    parameters are frozen, so the model is called with detached copies that require grad."""
    params = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters()}
    logits = functional_call(model, params, (x,))
    loss = F.cross_entropy(logits, torch.full((x.shape[0],), label, dtype=torch.long, device=x.device))
    return torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)


def check_real_batch(per_class: int) -> None:
    if per_class < 1:
        raise TeddyError(f"real_batch_per_class must be >= 1, got {per_class} (recipe key real_batch_per_class)")


def class_matching_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, target_of) -> tuple:
    """DC's per-class objective: the sum over the classes in the batch of the distance between the
    synthetic images' gradient and `target_of(c)`, the real-data gradient of class c at `model`.
    One small forward per class: in eval mode this equals slicing a full-batch forward, and each
    double-backward graph then spans only that class's images."""
    total = x.new_zeros(())
    for c in torch.unique(y).tolist():
        total = total + gradient_distance(class_gradients(model, x[y == c], c, create_graph=True), target_of(c))
    return total, {"grad": total.detach()}  # read when logged


def real_gradients(pool, real, num_classes: int, per_class: int, generator: torch.Generator,
                   device: torch.device) -> dict:
    """The cache: for each pool member and class, the real-data gradient from `per_class` random
    real images of that class (all of them when the class has fewer)."""
    check_real_batch(per_class)
    chosen = [draw_indices(idx, per_class, generator) for idx in class_indices(real.targets, num_classes)]
    grads = []
    for model in pool.members:
        model.eval()
        per_member = []
        for c, idx in enumerate(chosen):
            if len(idx) == 0:
                per_member.append(None)  # a class absent from the real set cannot be matched
                continue
            x, _ = stack_items(real, idx)
            per_member.append([g.detach() for g in class_gradients(model, x.to(device), c, create_graph=False)])
        grads.append(per_member)
    return {"names": list(pool.names), "shapes": [parameter_shapes(m) for m in pool.members],
            "per_class": per_class, "grads": grads}


def check_gradient_cache(cache: dict, pool) -> None:
    """A cache belongs to one pool: same members, in the same order, with the same shapes."""
    names, shapes = list(pool.names), [parameter_shapes(m) for m in pool.members]
    if cache.get("names") != names:
        raise TeddyError(f"gradient cache was made for pool members {cache.get('names')}, but the pool has "
                         f"{names} (recipe keys pool / pool_size / gradient_cache)")
    for name, cached, actual in zip(names, cache["shapes"], shapes):
        if cached != actual:
            raise TeddyError(f"gradient cache: pool member '{name}' has parameter shapes {actual}, the cache "
                             f"{cached} (recipe key gradient_cache: delete it or point it elsewhere)")


def load_or_make_gradient_cache(task: DistillTask, generator: torch.Generator) -> dict:
    path = task.recipe.get("gradient_cache")
    if path and Path(path).exists():
        cache = load_torch(path, what="gradient cache")
    else:
        cache = real_gradients(task.pool, task.real, task.info.num_classes,
                               int(task.recipe["real_batch_per_class"]), generator, task.device)
        if path:
            save_torch(cache, path)
    return cache  # gradient_loss_fn checks it against the pool


def gradient_loss_fn(pool, cache: dict):
    check_gradient_cache(cache, pool)
    member_index = {id(m): i for i, m in enumerate(pool.members)}
    device = next(pool.members[0].parameters()).device
    cached = [[None if g is None else [t.to(device) for t in g] for g in member] for member in cache["grads"]]

    def loss_fn(model, x, y, iteration):
        real = cached[member_index[id(model)]]

        def target_of(c):
            if real[c] is None:
                raise TeddyError(f"gradient matching: class {c} has no real images in the gradient cache")
            return real[c]
        return class_matching_loss(model, x, y, target_of)
    return loss_fn


def fresh_gradient_loss_fn(real, num_classes: int, per_class: int, seed: int):
    """gradient_loss_fn for a fresh pool: every model is new, so the real-data gradient of each
    class in the batch is computed at it, from `per_class` real images of the class drawn by a
    generator seeded from (seed, iteration), so a resumed run draws the same images."""
    check_real_batch(per_class)
    by_class = class_indices(real.targets, num_classes)

    def loss_fn(model, x, y, iteration):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(iteration))

        def target_of(c):
            if len(by_class[c]) == 0:
                raise TeddyError(f"gradient matching: class {c} has no real images")
            x_real, _ = stack_items(real, draw_indices(by_class[c], per_class, generator))
            return [g.detach() for g in class_gradients(model, x_real.to(x.device), c, create_graph=False)]
        return class_matching_loss(model, x, y, target_of)
    return loss_fn


MATCHING = ("statistics", "gradient")


# optimised batch by batch (teddy.methods.base.run_batches), so it shards
# the recipe keys only teddy reads (its part of the config schema)
RECIPE_KEYS = {
    "matching": {"enum": ["statistics", "gradient"]},
    "alpha": {"type": "number", "minimum": 0},
    "first_bn_weight": {"type": "number", "minimum": 0},
    "ce_weight": {"type": "number", "minimum": 0},
    "real_batch_per_class": {"type": "integer", "minimum": 1, "description": "teddy gradient matching: real images per (pool member, class) gradient (default 64)"},
    "gradient_cache": {"type": "string", "description": "teddy gradient matching: file keeping the real gradients; reused if present, must match the pool"},
}

@register_method("teddy", recipe_keys={**HARNESS_KEYS, **RECIPE_KEYS}, per_batch=True, defaults={**HARNESS_DEFAULTS, **DEFAULTS})
def distill(task: DistillTask) -> Distilled:
    matching = task.recipe["matching"]
    if matching not in MATCHING:
        raise TeddyError(f"unknown matching form '{matching}' (recipe key matching); known: {sorted(MATCHING)}")
    if task.pool is None:
        raise TeddyError("teddy needs a pool (recipe key pool)")
    task.pool.to(task.device)
    if matching == "statistics":
        loss_fn = statistics_loss_fn(task.recipe)
    else:
        per_class = int(task.recipe["real_batch_per_class"])
        if not hasattr(task.pool, "members"):  # a fresh pool: no member to cache gradients for
            loss_fn = fresh_gradient_loss_fn(task.real, task.info.num_classes, per_class, task.seed + 1)
        else:
            # its own generator, so the synthetic run is the same whether the cache was made or loaded
            cache = load_or_make_gradient_cache(task, torch.Generator().manual_seed(task.seed + 1))
            loss_fn = gradient_loss_fn(task.pool, cache)
    return run_batches(task, loss_fn, desc=f"teddy-{matching} ipc{task.ipc}")
