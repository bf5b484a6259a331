"""Matching terms of the Taylor-approximated objective (docs/method.md section 2), and the KD loss of
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
    `sizes` (stacked synthetic batches, `teddy.methods.base`): the forward's input is several
    batches concatenated along dim 0, of these sizes; each layer then records one distance per
    batch, over that batch's rows only, and `losses(first_bn_weight)` gives one sum per batch.
    """

    def __init__(self, model: nn.Module, sizes: list[int] | None = None):
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError("statistics matching needs a model with BatchNorm layers")
        self.sizes = list(sizes) if sizes is not None and len(sizes) > 1 else None
        self.distances: list = []
        self.handles = []

    def _hook(self, module, inputs, output):
        features = inputs[0]
        if self.sizes is None:
            self.distances.append(statistics_distance(features, module.running_mean, module.running_var))
        else:  # one distance per stacked batch, over its own rows: slices of the shared forward's input
            self.distances.append([statistics_distance(part, module.running_mean, module.running_var)
                                   for part in features.split(self.sizes)])

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

    def losses(self, first_bn_weight: float = 10.0) -> list[torch.Tensor]:
        """Per stacked batch, the weighted sum over layers (one entry when not stacked)."""
        if self.sizes is None:
            return [self.loss(first_bn_weight)]
        weights = [first_bn_weight] + [1.0] * (len(self.distances) - 1)
        return [sum(w * d[k] for w, d in zip(weights, self.distances)) for k in range(len(self.sizes))]


def bn_statistics_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, alpha: float = 1.0,
                       first_bn_weight: float = 10.0, ce_weight: float = 1.0):
    """CE(f(x), y) * ce_weight + alpha * sum_l w_l * statistics_distance_l. Returns (loss, parts);
    the parts are detached 0-d tensors (reading them is a host synchronisation: the caller does
    it when it logs)."""
    [(loss, parts)] = bn_statistics_losses(model, [x], [labels], alpha, first_bn_weight, ce_weight)
    return loss, parts


def bn_statistics_losses(model: nn.Module, xs: list[torch.Tensor], labels: list[torch.Tensor | None],
                         alpha: float = 1.0, first_bn_weight: float = 10.0, ce_weight: float = 1.0):
    """`bn_statistics_loss` of several batches through ONE forward of `model` (their
    concatenation; `model` in eval mode, so each image's features do not depend on the others):
    per batch, (its loss over its own images and logits only, its parts). The gradient of the
    sum of the returned losses with respect to batch k's pixels is that of batch k's own loss.
    One batch: the very computation of the unstacked loss (no concatenation, no slicing)."""
    sizes = [x.shape[0] for x in xs]
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    with BNStatisticsRecorder(model, sizes) as rec:
        logits = model(x)
    out = []
    for stats, part, y in zip(rec.losses(first_bn_weight), [logits] if len(xs) == 1 else logits.split(sizes), labels):
        ce = F.cross_entropy(part, y) if y is not None and ce_weight else part.new_zeros(())
        out.append((ce_weight * ce + alpha * stats, {"ce": ce.detach(), "bn": stats.detach()}))
    return out


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


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            t_squared: bool = True) -> torch.Tensor:
    """KL(teacher/T || student/T), batch-mean, times T^2 (Hinton et al.) unless `t_squared` is
    false (SRe2L's ImageNet and RDED's students)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return kl * (t * t) if t_squared else kl
