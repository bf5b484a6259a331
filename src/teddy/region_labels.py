"""Region-wise soft labels for stitched images (RDED's relabelling, as its paper describes it).

An RDED image is `factor x factor` patches of different real images. The RDED paper relabels
such an image region by region; its public code (LINs-lab/RDED, validation/main.py) does not:
its student loop feeds the teacher the whole augmented image (random-resized crop with area
at least 1/factor, flip, CutMix) and uses that one output, exactly as this pipeline's online
KD and stored labels do for every method. The pipeline therefore keeps the whole-image
teacher output as the default for rded (the peers' measured protocol, and the same protocol as
every other row of the table); this module gives the region-wise alternative so the
difference can be measured (benchmarks/rded_labels.py, docs/rded_labels.md).

`RegionTeacher(teacher, factor, temperature)` is a drop-in teacher: where the pipeline passes
a teacher (`train_model(..., teacher=...)` for online KD, `precompute_soft_labels(...,
teacher, ...)` for stored labels), wrapping it gives region-wise targets with no other
change. Each of the `factor x factor` grid cells of the (augmented) batch is resized to the
full input size, as a crop is before the teacher sees it, and run through the teacher; the
target is the mean of the cells' temperature-softened distributions. The wrapper returns
`temperature * log(mean probability)`, so that `softmax(output / temperature)` (what KD takes
from a teacher's logits) is exactly that mean.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from teddy.errors import TeddyError


def grid_cells(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The factor x factor cells of every image (N x factor^2 x C x H/f x W/f), row-major."""
    n, c, h, w = x.shape
    if h % factor or w % factor:
        raise TeddyError(f"region labels: factor {factor} does not divide the image size {h}x{w}")
    cells = x.view(n, c, factor, h // factor, factor, w // factor).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(n, factor * factor, c, h // factor, w // factor)


@torch.no_grad()
def region_soft_labels(teacher: nn.Module, x: torch.Tensor, factor: int, temperature: float) -> torch.Tensor:
    """Per-cell teacher distributions at `temperature` (N x factor^2 x classes)."""
    cells = grid_cells(x, factor)
    n, k = cells.shape[:2]
    flat = F.interpolate(cells.flatten(0, 1), size=x.shape[-2:], mode="bilinear", align_corners=False)
    probs = F.softmax(teacher(flat).float() / temperature, dim=1)
    return probs.view(n, k, -1)


class RegionTeacher(nn.Module):
    """A teacher whose logits, softened at `temperature`, are the mean of its region-wise
    distributions (see the module docstring)."""

    def __init__(self, teacher: nn.Module, factor: int, temperature: float):
        super().__init__()
        self.teacher, self.factor, self.temperature = teacher, int(factor), float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = region_soft_labels(self.teacher, x, self.factor, self.temperature).mean(1)
        return self.temperature * mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
