"""Distillation augmentation: differentiable and replayable.

A random augmentation is drawn once as plain numbers (`sample_augment_params`: a resized crop
shared by the batch, as in SRe2L, a per-image horizontal flip, a per-batch shift), so it can be
stored (FKD-style relabelling) and replayed exactly (`apply_augment`), and gradients flow
through it to the synthetic pixels. `pixel_bounds` gives the normalised-space box of valid
pixels that the synthetic images are clamped to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from teddy.data import DatasetInfo


def sample_augment_params(batch_size: int, image_size: int, cfg: dict, generator: torch.Generator) -> dict:
    """Draw one random augmentation: a resized crop (shared by the batch, as in SRe2L),
    a per-image horizontal flip and a per-batch shift. Plain numbers, so they can be stored
    (FKD-style relabelling) and replayed exactly."""
    params = {}
    scale = cfg.get("crop_scale", [0.5, 1.0])
    if cfg.get("crop", True) and scale[0] < 1.0:
        area = torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        log_r = torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).item()
        ratio = math.exp(log_r)
        h = min(image_size, max(1, int(round(image_size * math.sqrt(area / ratio)))))
        w = min(image_size, max(1, int(round(image_size * math.sqrt(area * ratio)))))
        top = int(torch.randint(0, image_size - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, image_size - w + 1, (1,), generator=generator))
        params["crop"] = (top, left, h, w)
    if cfg.get("flip", True):
        params["flip"] = torch.rand(batch_size, generator=generator).lt(0.5).tolist()
    shift = int(cfg.get("max_shift", 0))
    if shift > 0:
        params["shift"] = tuple(int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
    return params


def apply_augment(x: torch.Tensor, params: dict) -> torch.Tensor:
    """Apply sampled augmentation params to a batch; differentiable w.r.t. x."""
    size = x.shape[-2:]
    if "crop" in params:
        top, left, h, w = params["crop"]
        x = F.interpolate(x[..., top:top + h, left:left + w], size=size, mode="bilinear", align_corners=False)
    if "flip" in params:
        # built on the host, copied without waiting for the device (a blocking copy would
        # synchronise the host with the GPU every step of the distillation loop)
        mask = torch.tensor(params["flip"], dtype=torch.bool).to(x.device, non_blocking=True).view(-1, 1, 1, 1)
        x = torch.where(mask, x.flip(-1), x)
    if "shift" in params:
        dy, dx = params["shift"]
        pad = max(abs(dy), abs(dx))
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
            x = x[..., pad + dy: pad + dy + size[0], pad + dx: pad + dx + size[1]]
    return x


def augment(x: torch.Tensor, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    return apply_augment(x, sample_augment_params(x.shape[0], x.shape[-1], cfg, generator))


def pixel_bounds(info: DatasetInfo, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-space per-channel bounds of valid pixels [0, 1]."""
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std
