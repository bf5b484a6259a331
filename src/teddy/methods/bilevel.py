"""`bilevel`: the exact unrolled objective Teddy approximates (docs/method.md section 1).

Every outer iteration builds a fresh model (`inner_arch` with `inner_arch_options`, random
init), trains it `unroll_steps` (K) plain SGD steps at `inner_lr` on the augmented synthetic
batch while keeping the graph, then takes the cross-entropy of the unrolled model on a batch
of `real_batch_size` real images and back-propagates it through all K steps to the pixels.
Memory and time grow with K; that growth is what the efficiency comparison measures.

The K inner steps reuse the one augmented batch the harness draws per outer iteration. The
fresh model stays in train mode throughout (BatchNorm on batch statistics, inner and outer):
after a few steps from random init its running statistics mean nothing yet. Real batches and
fresh initialisations come from the global torch RNG, which the harness checkpoints, so a
resumed run draws the same ones.

Recipe keys: unroll_steps (default 10, >= 1), inner_lr (0.01), inner_arch (convnet),
inner_arch_options ({}), real_batch_size (256); the harness keys (iterations, lr, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from teddy.data import stack_items
from teddy.errors import TeddyError
from teddy.methods.base import HARNESS_DEFAULTS, HARNESS_KEYS, Distilled, DistillTask, run_batches
from teddy.methods.registry import register_method
from teddy.models import build_model


def unrolled_loss(model: torch.nn.Module, x_syn: torch.Tensor, y_syn: torch.Tensor, x_real: torch.Tensor,
                  y_real: torch.Tensor, steps: int, inner_lr: float) -> torch.Tensor:
    """CE on (x_real, y_real) of `model` after `steps` SGD steps on (x_syn, y_syn), differentiable
    with respect to x_syn through every step."""
    params = {name: p for name, p in model.named_parameters()}
    for _ in range(steps):
        inner = F.cross_entropy(functional_call(model, params, (x_syn,)), y_syn)
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        params = {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads)}
    return F.cross_entropy(functional_call(model, params, (x_real,)), y_real)


DEFAULTS = {"unroll_steps": 10, "inner_lr": 0.01, "inner_arch": "convnet", "inner_arch_options": {},
            "real_batch_size": 256}


def bilevel_loss_fn(task: DistillTask):
    r = task.recipe
    steps, inner_lr = int(r.get("unroll_steps", DEFAULTS["unroll_steps"])), float(r.get("inner_lr", DEFAULTS["inner_lr"]))
    real_batch_size = int(r.get("real_batch_size", DEFAULTS["real_batch_size"]))
    if steps < 1:
        raise TeddyError(f"unroll_steps must be >= 1, got {steps} (recipe key unroll_steps)")
    if real_batch_size < 1:
        raise TeddyError(f"real_batch_size must be >= 1, got {real_batch_size} (recipe key real_batch_size)")
    arch, options = r.get("inner_arch", DEFAULTS["inner_arch"]), dict(r.get("inner_arch_options") or {})
    info = task.info

    def loss_fn(model, x, y, iteration):
        fresh = build_model(arch, info.num_classes, info.channels, info.image_size, **options).to(task.device)
        fresh.train()
        idx = torch.randint(len(task.real), (real_batch_size,))
        x_real, y_real = stack_items(task.real, idx)
        loss = unrolled_loss(fresh, x, y, x_real.to(task.device), y_real.to(task.device), steps, inner_lr)
        return loss, {"real_ce": loss.detach()}  # read when logged
    return loss_fn


# each synthetic batch is optimised on its own, its inner model trained on that batch
# the recipe keys only bilevel reads (its part of the config schema)
RECIPE_KEYS = {
    "unroll_steps": {"type": "integer", "minimum": 1, "description": "bilevel: inner SGD steps K (default 10)"},
    "inner_lr": {"type": "number", "exclusiveMinimum": 0, "description": "bilevel: inner SGD learning rate (default 0.01)"},
    "inner_arch": {"type": "string", "description": "bilevel: architecture trained in the inner loop (default convnet)"},
    "inner_arch_options": {"type": "object", "description": "bilevel: constructor options of inner_arch"},
    "real_batch_size": {"type": "integer", "minimum": 1, "description": "bilevel: real images in the outer loss (default 256)"},
}

@register_method("bilevel", recipe_keys={**HARNESS_KEYS, **RECIPE_KEYS}, per_batch=True, defaults={**HARNESS_DEFAULTS, **DEFAULTS})
def distill(task: DistillTask) -> Distilled:
    loss_fn = bilevel_loss_fn(task)  # checks the recipe before any work
    return run_batches(task, loss_fn, desc=f"bilevel-K{task.recipe['unroll_steps']} ipc{task.ipc}")
