"""Matching terms of the Taylor-approximated objective (../shared/docs/METHOD.md section 2), and the KD loss of
the student loop."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from teddy.models import bn_layers


def statistics_distance(features: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """||mu(x) - mu_run||_2 + ||var(x) - var_run||_2 over channels; x is a BN layer's input (N, C, ...).
    Biased variance and unsquared norms, as in the SRe2L/Teddy peer code."""
    dims = [0] + list(range(2, features.ndim))
    mean = features.mean(dim=dims)
    var = features.var(dim=dims, unbiased=False)
    return torch.norm(mean - running_mean, 2) + torch.norm(var - running_var, 2)


class BNStatisticsRecorder:
    """Forward hooks on every BatchNorm layer of `model` that record the distance between the
    current batch's input statistics and the layer's running (real-data) statistics.

    Use as a context manager around the forward pass; `loss(first_bn_weight)` sums the layers.
    """

    def __init__(self, model: nn.Module):
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError("statistics matching needs a model with BatchNorm layers")
        self.distances: list[torch.Tensor] = []
        self.handles = []

    def _hook(self, module, inputs, output):
        self.distances.append(statistics_distance(inputs[0], module.running_mean, module.running_var))

    def __enter__(self):
        self.distances = []
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def loss(self, first_bn_weight: float = 10.0) -> torch.Tensor:
        weights = [first_bn_weight] + [1.0] * (len(self.distances) - 1)
        return sum(w * d for w, d in zip(weights, self.distances))


def bn_statistics_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, alpha: float = 1.0,
                       first_bn_weight: float = 10.0, ce_weight: float = 1.0):
    """CE(f(x), y) * ce_weight + alpha * sum_l w_l * statistics_distance_l. Returns (loss, parts)."""
    with BNStatisticsRecorder(model) as rec:
        logits = model(x)
    stats = rec.loss(first_bn_weight)
    ce = F.cross_entropy(logits, labels) if labels is not None and ce_weight else logits.new_zeros(())
    return ce_weight * ce + alpha * stats, {"ce": ce.item(), "bn": stats.item()}


def gradient_distance(synthetic_grads, real_grads) -> torch.Tensor:
    """Sum over layers of per-output-row cosine distance (1 - cos), as in gradient-matching
    work; 1-d parameters (biases, BN affine) carry little signal and are skipped."""
    total = None
    for gs, gr in zip(synthetic_grads, real_grads):
        if gs.ndim == 1:
            continue
        gs2, gr2 = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        d = (1 - F.cosine_similarity(gs2, gr2, dim=1, eps=1e-8)).sum()
        total = d if total is None else total + d
    if total is None:
        raise ValueError("no parameter with more than one dimension to match")
    return total


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher/T || student/T) * T^2 (Hinton et al.), batch-mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
