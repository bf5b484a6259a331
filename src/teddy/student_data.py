"""The student (and base-training) data pipeline: an epoch plan drawn up front, then batches
built from it, in memory or through DataLoader workers.

An epoch plan is a dict of flat tensors, drawn from one seeded generator in the main process:
the shuffled image order, one random-resized-crop box per image (relative coordinates, so the
same box applies to a 28-pixel tensor or a full-resolution JPEG), a flip per image, a shift per
batch and, as config switches, CutMix or Mixup per batch, and the augmentations of the DC and
DSA/DM benchmarks (`dc_augment`: one of crop, scale, rotate, noise per image; `dsa`: one
DiffAugment family per batch, parameters per image), drawn after everything else and only when
set, so that plans without them are drawn as before. The same plan drives the online-KD
student, the stored-label writer (teddy.label_store, which saves it beside the teacher's
logits) and a student trained from stored labels, so all three see the very same pixels.

A distilled set lies in one of three places (`load_student_set`): as uint8 pixels on the device
(PixelSet, on CUDA when it fits evaluate.device_memory_fraction of the GPU's memory), as
normalised float32 tensors in host memory (TensorImageDataset, within evaluate.in_memory_max_mb),
or as PNGs decoded by DataLoader workers (persistent, pinned memory on CUDA). All three take the
same path to a batch (StudentData.epoch): gathered, on the device, normalised, every image
cropped to its own box in one torchvision.ops.roi_align call, flipped, shifted, given the DC or
DSA augmentation (index gathers and affine_grid/grid_sample over the batch) and mixed, so the
same plan gives the same batches bit for bit on one device, and a label store written on one
placement serves the others. ImageFolder trees of real images (base training) are cropped from
the full-resolution image inside the workers. Without `crop`, ImageFolder items keep the
dataset's own transform (resize and centre crop), and the draws are those of the older
batch-level augmentation, so runs without crop are unchanged.

Followed: SRe2L's and RDED's student recipes (RandomResizedCrop with the dataset's scale range,
flip, CutMix with the box-area label weight of Yun et al. 2019, Mixup of Zhang et al. 2018),
read in VILA-Lab/SRe2L and LINs-lab/RDED; the crop sampling is torchvision's
RandomResizedCrop.get_params without its retry loop (the box is clamped to the image instead).
The DC and DSA augmentations follow VICO-UoE/DatasetCondensation utils.py (`augment` with
`get_daparam`'s values; `DiffAugment` with `ParamDiffAug`'s), as its evaluate_synset applies
them to every training batch; see draw_dc_augment and draw_dsa.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from teddy.data import TensorImageDataset
from teddy.distilled_set import PngSetDataset, _read_pixels, check_set, from_uint8, load_set_tensors, read_set
from teddy.errors import TeddyError

MIX_NONE, MIX_CUTMIX, MIX_MIXUP = 0, 1, 2


# --- drawing the plan ------------------------------------------------------------------------

def crop_boxes(n: int, scale, generator: torch.Generator) -> torch.Tensor:
    """n random-resized-crop boxes (x0, y0, x1, y1) in [0, 1], area in `scale`, aspect ratio in
    [3/4, 4/3] (log-uniform), each box inside the image."""
    area = torch.empty(n).uniform_(float(scale[0]), float(scale[1]), generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    x0 = torch.rand(n, generator=generator) * (1 - w)
    y0 = torch.rand(n, generator=generator) * (1 - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def chunk_positions(n: int, parts: int) -> list[torch.Tensor]:
    """Positions 0..n-1 of a batch split into `parts` contiguous chunks (processes x
    accumulation steps, in that nesting order)."""
    return list(torch.tensor_split(torch.arange(n), parts))


def _beta(alpha: float, generator: torch.Generator) -> float:
    # torch's Beta takes no generator; a numpy one seeded from ours keeps the plan reproducible
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def draw_mix(n: int, image_size: int, cfg: dict, chunks: int, generator: torch.Generator):
    """(kind, lam, box, perm) of one batch. Partners are drawn within each chunk, so that every
    process and accumulation step mixes only images it holds (as timm does per GPU)."""
    cutmix, mixup = float(cfg.get("cutmix", 0.0)), float(cfg.get("mixup", 0.0))
    if cutmix <= 0 and mixup <= 0:
        return MIX_NONE, 1.0, (0, 0, 0, 0), torch.arange(n)
    if cutmix > 0 and mixup > 0:
        kind = MIX_CUTMIX if torch.rand(1, generator=generator).item() < 0.5 else MIX_MIXUP
    else:
        kind = MIX_CUTMIX if cutmix > 0 else MIX_MIXUP
    lam = _beta(cutmix if kind == MIX_CUTMIX else mixup, generator)
    box = (0, 0, 0, 0)
    if kind == MIX_CUTMIX:
        cut = math.sqrt(1.0 - lam)
        ch = cw = int(image_size * cut)
        cy, cx = (int(v) for v in torch.randint(0, image_size, (2,), generator=generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, image_size)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, image_size)
        box = (y0, x0, y1, x1)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (image_size * image_size)  # the area actually pasted
    perm = torch.cat([c[torch.randperm(len(c), generator=generator)] for c in chunk_positions(n, chunks)])
    return kind, lam, box, perm


# --- the DC and DSA benchmark augmentations (drawn into the plan) -----------------------------
#
# VICO-UoE/DatasetCondensation utils.py: `augment` with the parameters of `get_daparam` (DC's
# evaluation; MNIST: strategy crop_scale_rotate, so the noise parameter is set but unused), and
# `DiffAugment` with `ParamDiffAug` (DSA's and DM's evaluation: main.py / main_DM.py call it on
# every training batch with seed -1, i.e. not Siamese: one family per batch, parameters per
# sample). Their random numbers come from numpy's and torch's global generators there; here
# they are drawn from the plan's generator, in the same distributions.

DC_OPS = ("crop", "scale", "rotate", "noise")
DSA_FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
# get_daparam (utils.py): crop 4 px, scale 0.2, rotate 45 deg, noise 0.001; MNIST's strategy
DC_DEFAULTS = {"strategy": ["crop", "scale", "rotate"], "crop": 4, "scale": 0.2, "rotate": 45, "noise": 0.001}
# ParamDiffAug (utils.py); the strategy is the --dsa_strategy of the repository's readme commands
# (main.py --method DSA, main_DM.py, CIFAR10); the readme drops flip for MNIST and SVHN
DSA_DEFAULTS = {"strategy": "color_crop_cutout_flip_scale_rotate", "scale": 1.2, "rotate": 15.0, "crop": 0.125,
                "cutout": 0.5, "brightness": 1.0, "saturation": 2.0, "contrast": 0.5}
DSA_FLIP_PROBABILITY = 0.5  # ParamDiffAug.prob_flip


def check_benchmark_augment(cfg: dict) -> None:
    """A section with dc_augment or dsa states crop and flip: their defaults (on) would add
    SRe2L's crop and flip to a benchmark augmentation without anyone having written it."""
    if not cfg or (cfg.get("dc_augment") is None and cfg.get("dsa") is None):
        return
    missing = [k for k in ("crop", "flip") if k not in cfg]
    if missing:
        raise TeddyError(f"augment with dc_augment or dsa must state {' and '.join(missing)} "
                         f"(false for the DC/DSA benchmarks, which apply nothing else)")


def dc_settings(cfg: dict) -> dict:
    s = {**DC_DEFAULTS, **(cfg or {})}
    unknown = sorted(set(s) - set(DC_DEFAULTS)) + [op for op in s["strategy"] if op not in DC_OPS]
    if unknown or not s["strategy"]:
        raise TeddyError(f"augment.dc_augment: unknown key or operation {unknown} (operations: {', '.join(DC_OPS)})")
    if "crop" in s["strategy"] and int(s["crop"]) < 1:
        raise TeddyError("augment.dc_augment: crop (padding in pixels) must be at least 1 with the crop operation")
    return s


def dsa_settings(cfg: dict) -> dict:
    s = {**DSA_DEFAULTS, **(cfg or {})}
    families = [f for f in str(s["strategy"]).split("_") if f]
    unknown = sorted(set(s) - set(DSA_DEFAULTS)) + [f for f in families if f not in DSA_FAMILIES]
    if unknown or not families:
        raise TeddyError(f"augment.dsa: unknown key or family {unknown} (families: {', '.join(DSA_FAMILIES)})")
    return {**s, "families": families}


def draw_dc_augment(bounds: list[int], image_size: int, cfg: dict, generator: torch.Generator) -> dict:
    """DC's per-image augmentation (DatasetCondensation utils.py `augment`), drawn for the
    plan's images: one operation per image, uniform over the strategy (np.random.permutation(
    augs)[0] there), and its integer arguments, `dc_arg` [N, 2]:
    crop: the shift (dy, dx) of the window cut from the image padded by `crop` pixels, whose
          corner is uniform in [0, 2 crop) (permutation(crop*2)[0]), so a shift in [-crop, crop);
    scale: the resized height and width, int(U(1 - scale, 1 + scale) x size) each (`scalefun`);
    rotate: the angle in whole degrees, uniform in [-rotate, rotate) (np.random.randint).
    Every family's arguments are drawn for every image (in DC_OPS order), then the chosen
    one's kept. With noise in the strategy, one seed per batch for the noise (`dc_noise_seed`)."""
    s = dc_settings(cfg)
    n, size = int(bounds[-1]), int(image_size)
    codes = torch.tensor([DC_OPS.index(op) for op in s["strategy"]])
    op = codes[torch.randint(0, len(codes), (n,), generator=generator)]
    arg = torch.zeros(n, 2, dtype=torch.int64)
    if "crop" in s["strategy"]:
        crop = int(s["crop"])
        shift = torch.randint(0, 2 * crop, (n, 2), generator=generator) - crop
        arg = torch.where((op == DC_OPS.index("crop")).view(-1, 1), shift, arg)
    if "scale" in s["strategy"]:
        scale = float(s["scale"])
        hw = (torch.empty(n, 2, dtype=torch.float64).uniform_(1 - scale, 1 + scale, generator=generator)
              * size).floor().long().clamp(min=1)
        arg = torch.where((op == DC_OPS.index("scale")).view(-1, 1), hw, arg)
    if "rotate" in s["strategy"]:
        rotate = int(s["rotate"])
        angle = (torch.randint(-rotate, rotate, (n,), generator=generator) if rotate > 0
                 else torch.zeros(n, dtype=torch.long))
        arg[:, 0] = torch.where(op == DC_OPS.index("rotate"), angle, arg[:, 0])
    plan = {"dc_op": op.to(torch.int8), "dc_arg": arg.to(torch.int16)}
    if "noise" in s["strategy"]:
        plan["dc_noise"] = float(s["noise"])
        plan["dc_noise_seed"] = torch.randint(0, 2**62, (len(bounds) - 1,), generator=generator)
    return plan


def draw_dsa(bounds: list[int], image_size: int, cfg: dict, generator: torch.Generator) -> dict:
    """DSA's DiffAugment as DSA/DM evaluate (DatasetCondensation utils.py `DiffAugment`,
    aug_mode 'S', seed -1): per batch one family, uniform over the strategy's families
    (`dsa_family`, an index into DSA_FAMILIES), then that family's per-sample parameters,
    `dsa_param` [N, 4], as the functions of utils.py draw them:
    color   (rand_brightness, rand_saturation, rand_contrast, in that order): the added
            brightness (U - 0.5) x brightness, the saturation factor U x saturation, the
            contrast factor U + contrast;
    crop    (rand_crop): the shift (rows, columns), each uniform in [-s, s] with
            s = int(size x crop + 0.5);
    cutout  (rand_cutout): the zeroed square's rows and columns [r0, r1) x [c0, c1), of side
            int(size x cutout + 0.5), centre uniform in [0, size + 1 - side % 2);
    flip    (rand_flip): 1 where U < 0.5;
    scale   (rand_scale): the affine factors sx, sy, each U x (scale - 1/scale) + 1/scale;
    rotate  (rand_rotate): the angle (U - 0.5) x 2 x rotate degrees, in radians."""
    s = dsa_settings(cfg)
    size = int(image_size)
    families, params = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        n = hi - lo
        family = s["families"][int(torch.randint(0, len(s["families"]), (1,), generator=generator))]
        p = torch.zeros(n, 4)
        u = lambda: torch.rand(n, generator=generator)  # noqa: E731
        if family == "color":
            p[:, 0] = (u() - 0.5) * float(s["brightness"])
            p[:, 1] = u() * float(s["saturation"])
            p[:, 2] = u() + float(s["contrast"])
        elif family == "crop":
            shift = int(size * float(s["crop"]) + 0.5)
            p[:, :2] = torch.randint(-shift, shift + 1, (n, 2), generator=generator).float()
        elif family == "cutout":
            side = int(size * float(s["cutout"]) + 0.5)
            centre = torch.randint(0, size + (1 - side % 2), (n, 2), generator=generator)
            start = centre - side // 2
            p[:] = torch.cat([start, start + side], dim=1).float()  # (r0, c0, r1, c1)
        elif family == "flip":
            p[:, 0] = u().lt(DSA_FLIP_PROBABILITY).float()
        elif family == "scale":
            ratio = float(s["scale"])
            p[:, 0] = u() * (ratio - 1.0 / ratio) + 1.0 / ratio
            p[:, 1] = u() * (ratio - 1.0 / ratio) + 1.0 / ratio
        elif family == "rotate":
            p[:, 0] = (u() - 0.5) * 2 * float(s["rotate"]) / 180 * math.pi
        families.append(DSA_FAMILIES.index(family)), params.append(p)
    return {"dsa_family": torch.tensor(families, dtype=torch.int8),
            "dsa_param": torch.cat(params) if params else torch.zeros(0, 4)}


def draw_shuffle_patches(n: int, image_size: int, factor: int, generator: torch.Generator) -> dict:
    """RDED's ShufflePatches (LINs-lab/RDED validation/utils.py), drawn for n images: the image
    is cut into `factor` vertical strips, which are shuffled, then into `factor` horizontal
    strips, shuffled too; `patch_cols` and `patch_rows` [n, factor] give each image's new strip
    order (uniform permutations, as random.shuffle draws them)."""
    factor = int(factor)
    if image_size % factor:
        raise TeddyError(f"augment.shuffle_patches={factor} needs an image side divisible by it, not {image_size}")
    cols = torch.rand(n, factor, generator=generator).argsort(dim=1)
    rows = torch.rand(n, factor, generator=generator).argsort(dim=1)
    return {"patch_cols": cols.to(torch.int8), "patch_rows": rows.to(torch.int8)}


def plan_epoch(num_images: int, batch_size: int, image_size: int, cfg: dict, generator: torch.Generator,
               chunks: int = 1) -> dict:
    """One epoch's plan (see the module docstring). The draw order (order, then per batch: crop
    boxes, flips, shift, mix) keeps runs without crop and mix identical to the earlier
    batch-level augmentation of teddy.augment. Then, only when set: dc_augment's draws
    (draw_dc_augment: fields dc_op, dc_arg, and dc_noise, dc_noise_seed with noise), then dsa's
    (draw_dsa: dsa_family, dsa_param), then shuffle_patches' (patch_cols, patch_rows)."""
    order = torch.randperm(num_images, generator=generator)
    starts = list(range(0, num_images, batch_size))
    if chunks > 1:  # every process and accumulation step needs at least one image
        starts = [s for s in starts if min(batch_size, num_images - s) >= chunks]
    # an empty augment section means none; otherwise teddy.augment's defaults (crop, scale 0.5-1, flip)
    check_benchmark_augment(cfg)
    crop = bool(cfg) and bool(cfg.get("crop", True)) and cfg.get("crop_scale", [0.5, 1.0])[0] < 1.0
    boxes, flips, shifts, kinds, lams, mix_boxes, perms, bounds = [], [], [], [], [], [], [], [0]
    max_shift = int(cfg.get("max_shift", 0))
    for s in starts:
        n = min(batch_size, num_images - s)
        if crop:
            boxes.append(crop_boxes(n, cfg.get("crop_scale", [0.5, 1.0]), generator))
        flips.append(torch.rand(n, generator=generator).lt(0.5) if cfg and cfg.get("flip", True)
                     else torch.zeros(n, dtype=torch.bool))
        shifts.append(torch.randint(-max_shift, max_shift + 1, (2,), generator=generator) if max_shift > 0
                      else torch.zeros(2, dtype=torch.long))
        kind, lam, box, perm = draw_mix(n, image_size, cfg, chunks, generator)
        kinds.append(kind), lams.append(lam), mix_boxes.append(box), perms.append(perm)
        bounds.append(bounds[-1] + n)
    order = torch.cat([order[s:s + min(batch_size, num_images - s)] for s in starts]) if starts else order[:0]
    # the benchmark augmentations draw after everything above, and only when set: the draws of
    # a plan without them, and the fields above of a plan with them, are unchanged
    extra = {}
    if cfg and cfg.get("dc_augment") is not None:
        extra.update(draw_dc_augment(bounds, image_size, cfg["dc_augment"], generator))
    if cfg and cfg.get("dsa") is not None:
        extra.update(draw_dsa(bounds, image_size, cfg["dsa"], generator))
    if cfg and int(cfg.get("shuffle_patches") or 1) > 1:
        extra.update(draw_shuffle_patches(int(bounds[-1]), image_size, cfg["shuffle_patches"], generator))
    return {"order": order.int(), "bounds": torch.tensor(bounds, dtype=torch.int32),
            "boxes": torch.cat(boxes) if boxes else None,
            "flip": torch.cat(flips) if flips else torch.zeros(0, dtype=torch.bool),
            "shift": torch.stack(shifts).short() if shifts else torch.zeros(0, 2, dtype=torch.int16),
            "mix_kind": torch.tensor(kinds, dtype=torch.int8), "mix_lam": torch.tensor(lams, dtype=torch.float32),
            "mix_box": torch.tensor(mix_boxes, dtype=torch.int16).view(-1, 4),
            "mix_perm": torch.cat(perms).int() if perms else torch.zeros(0, dtype=torch.int32),
            "chunks": int(chunks), **extra}


def plan_batches(plan: dict) -> int:
    return len(plan["bounds"]) - 1


# --- applying it -----------------------------------------------------------------------------

def roi_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image of `x` to its own relative box and resize back to x's size, in one call
    (on x's device, with no host round trip)."""
    from torchvision.ops import roi_align

    h, w = x.shape[-2:]
    b = boxes.to(x.device, x.dtype)
    rois = torch.stack([torch.arange(len(x), device=x.device, dtype=x.dtype),
                        b[:, 0] * w, b[:, 1] * h, b[:, 2] * w, b[:, 3] * h], dim=1)
    # sampling_ratio 1: one bilinear sample at each output pixel centre (a full box is the identity)
    return roi_align(x, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def shuffle_patches(x: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each image's strips put in its drawn order (draw_shuffle_patches): output strip k is input
    strip cols[k] (columns), then likewise for rows; two gathers over the batch."""
    n, c, h, w = x.shape
    factor = cols.shape[1]

    def order(perm, side):
        j = torch.arange(side, device=x.device)
        width = side // factor
        return perm.long()[:, j // width] * width + j % width  # [n, side]: the source of each output line

    x = x.gather(3, order(cols, w).view(n, 1, 1, w).expand(n, c, h, w))
    return x.gather(2, order(rows, h).view(n, 1, h, 1).expand(n, c, h, w))


def flip_and_shift(x: torch.Tensor, flip: torch.Tensor, shift) -> torch.Tensor:
    """teddy.augment.apply_augment's flip and shift, with the flip mask already a tensor on x's device."""
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    dy, dx = (int(v) for v in shift)
    pad = max(abs(dy), abs(dx))
    if pad:
        size = x.shape[-2:]
        x = F.pad(x, (pad, pad, pad, pad))
        x = x[..., pad + dy: pad + dy + size[0], pad + dx: pad + dx + size[1]]
    return x


def apply_mix(x: torch.Tensor, kind: int, lam: float, box, local_perm: torch.Tensor) -> torch.Tensor:
    if kind == MIX_NONE:
        return x
    partner = x[local_perm.to(x.device)]
    if kind == MIX_MIXUP:
        return lam * x + (1 - lam) * partner
    y0, x0, y1, x1 = (int(v) for v in box)
    x = x.clone()
    x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return x


def _index_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Per-image integer resampling: out[i, :, y, x] = x[i, :, rows[i, y], cols[i, x]] where both
    indices lie inside the image, else fill[i] ([n, C] or broadcastable). One gather for the
    whole batch: integer shifts and nearest-neighbour resizes exactly, without interpolation."""
    n, c, h, w = x.shape
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    picked = x.flatten(2).gather(2, index.flatten(1)[:, None, :].expand(n, c, h * w)).view(n, c, h, w)
    return torch.where(inside[:, None], picked, fill.view(n, c, 1, 1) if fill.dim() == 2 else fill)


def _affine_sample(x: torch.Tensor, theta: torch.Tensor, mode: str, fill=None) -> torch.Tensor:
    """grid_sample of x on affine_grid(theta) (align_corners False, zeros outside, as DSA's
    rand_scale and rand_rotate call them); with `fill`, the outside is `fill` instead of 0."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    if fill is None:
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return F.grid_sample(x - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    """affine_grid matrices [n, 2, 3] of a rotation by `angle` (radians) about the image centre,
    the matrix of DSA's rand_rotate."""
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(angle)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def apply_dc_augment(x: torch.Tensor, op: torch.Tensor, arg: torch.Tensor, used, noise=None) -> torch.Tensor:
    """DC's `augment` (DatasetCondensation utils.py) on normalised images, each by its own
    operation `op` (codes of DC_OPS) with its arguments `arg` (see draw_dc_augment); `used` (host
    side: the codes present in the epoch) skips work for absent operations without asking the
    device. Fill values are DC's: the per-channel mean of the batch (here: of the micro-batch)
    around a crop, zeros around a shrunk image, the mean of those channel means in a rotation's
    corners.
    crop:   the image padded with the channel means, cut at the drawn shift (`cropfun`), exact;
    scale:  nearest-neighbour resize to (h, w) (F.interpolate's default, floor(j x size / h)),
            centred on a zero canvas of side max(h, w, size) and centre-cut back (`scalefun`), exact;
    rotate: about the image centre, bicubic grid_sample (DC: scipy.ndimage.rotate, cubic spline,
            reshape=True, then the centre cut: the same rotation up to the interpolation kernel
            and a half pixel of centring when the rotated canvas has an odd surplus);
    noise:  plus noise x N(0, 1) (`noisefun`), the normal numbers given as `noise` [n, C, H, W]."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    op, arg = op.long(), arg.long()
    out = x
    if {DC_OPS.index("crop"), DC_OPS.index("scale")} & set(used):
        mean = x.mean(dim=(0, 2, 3))  # cropfun's pad value: torch.mean(images[:, c]) of the batch
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        is_crop = (op == DC_OPS.index("crop")).view(-1, 1)
        # crop: output pixel (y, x) is the input's (y + dy, x + dx)
        rows, cols = ys + arg[:, :1], xs + arg[:, 1:]
        # scale: resized (sh, sw) placed at (m - sh) // 2 of an m-canvas, m = max(sh, sw, h, w), cut at (m - h) // 2
        sh, sw = arg[:, :1].clamp(min=1), arg[:, 1:].clamp(min=1)
        m = torch.maximum(torch.maximum(sh, sw), torch.full_like(sh, max(h, w)))
        j = ys + (m - h) // 2 - (m - sh) // 2  # row of the resized image
        k = xs + (m - w) // 2 - (m - sw) // 2
        # F.interpolate nearest: source = min(floor(j x (float) in / out), in - 1), in float32
        src_r = torch.floor(j.float() * (h / sh.float())).long().clamp(max=h - 1)
        src_c = torch.floor(k.float() * (w / sw.float())).long().clamp(max=w - 1)
        src_r, src_c = torch.where((j >= 0) & (j < sh), src_r, -1), torch.where((k >= 0) & (k < sw), src_c, -1)
        rows, cols = torch.where(is_crop, rows, src_r), torch.where(is_crop, cols, src_c)
        fill = torch.where(is_crop, mean.view(1, -1), torch.zeros_like(mean).view(1, -1))
        moved = _index_sample(x, rows, cols, fill)
        picked = (op == DC_OPS.index("crop")) | (op == DC_OPS.index("scale"))
        out = torch.where(picked.view(-1, 1, 1, 1), moved, out)
    if DC_OPS.index("rotate") in used:
        fill = x.mean(dim=(0, 2, 3)).mean()  # rotatefun's cval: np.mean of the channel means
        angle = arg[:, 0].to(x.dtype) * (math.pi / 180)
        turned = _affine_sample(x, _rotation(angle), "bicubic", fill)
        out = torch.where((op == DC_OPS.index("rotate")).view(-1, 1, 1, 1), turned, out)
    if DC_OPS.index("noise") in used and noise is not None:
        out = torch.where((op == DC_OPS.index("noise")).view(-1, 1, 1, 1), x + noise.to(x.device, x.dtype), out)
    return out


def apply_dsa(x: torch.Tensor, family: int, param: torch.Tensor) -> torch.Tensor:
    """DSA's DiffAugment family `family` (an index into DSA_FAMILIES) with per-sample `param`
    (see draw_dsa), as the functions of DatasetCondensation utils.py compute it: colour on the
    normalised values (brightness added; saturation about the mean over channels, a no-op on
    one channel; contrast about the image mean), crop a shift with zeros entering (rand_crop),
    cutout zeros a square (rand_cutout), flip the last axis, scale and rotate bilinear
    grid_sample on affine_grid of DSA's matrices with zeros outside."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    name = DSA_FAMILIES[int(family)]
    p = param.to(x.device, x.dtype)
    if name == "color":
        x = x + p[:, 0].view(-1, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * p[:, 1].view(-1, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * p[:, 2].view(-1, 1, 1, 1) + mean
    if name == "crop":
        shift = p[:, :2].round().long()
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        return _index_sample(x, ys + shift[:, :1], xs + shift[:, 1:], torch.zeros((), device=x.device, dtype=x.dtype))
    if name == "cutout":
        box = p.round().long()
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        inside = (((ys >= box[:, :1]) & (ys < box[:, 2:3]))[:, :, None]
                  & ((xs >= box[:, 1:2]) & (xs < box[:, 3:4]))[:, None, :])
        return x * (~inside).to(x.dtype)[:, None]
    if name == "flip":
        return torch.where(p[:, 0].view(-1, 1, 1, 1) > 0.5, x.flip(-1), x)
    if name == "scale":
        zero = torch.zeros_like(p[:, 0])
        theta = torch.stack([torch.stack([p[:, 0], zero, zero], 1), torch.stack([zero, p[:, 1], zero], 1)], 1)
        return _affine_sample(x, theta, "bilinear")
    return _affine_sample(x, _rotation(p[:, 0]), "bilinear")  # rotate


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, batch: "MicroBatch") -> torch.Tensor:
    """Cross-entropy towards the mixed labels: lam * CE(y) + (1 - lam) * CE(partner's y)."""
    if batch.mix_kind == MIX_NONE:
        return F.cross_entropy(logits, y)
    return batch.lam * F.cross_entropy(logits, y) + (1 - batch.lam) * F.cross_entropy(logits, y[batch.local_perm])


class MicroBatch:
    """One process's share of one accumulation step of one batch, augmented and on device."""

    def __init__(self, step, micro, positions, x, y, mix_kind, lam, local_perm, batch_size):
        self.step, self.micro, self.positions, self.x, self.y = step, micro, positions, x, y
        self.mix_kind, self.lam, self.local_perm, self.batch_size = mix_kind, lam, local_perm, batch_size


def _open_rgb(path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


class PixelSet(Dataset):
    """A distilled set decoded once into uint8 pixels [N, C, H, W] on a device (the GPU when it
    fits evaluate.device_memory_fraction of the device's memory; see `load_student_set`).
    StudentData gathers, normalises, crops, flips and mixes its batches where the pixels lie,
    exactly as it does for the host tensors of TensorImageDataset and the streamed PNGs."""

    def __init__(self, pixels: torch.Tensor, targets: torch.Tensor, class_names, mean, std):
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"PixelSet wants uint8 N x C x H x W pixels, got {pixels.dtype} {tuple(pixels.shape)}")
        self.pixels, self.targets = pixels, targets.to(pixels.device).long()
        self.class_names, self.mean, self.std = list(class_names), [float(m) for m in mean], [float(v) for v in std]

    @property
    def image_size(self) -> int:
        return int(self.pixels.shape[-1])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return from_uint8(self.pixels[i:i + 1], self.mean, self.std)[0], self.targets[i]


class _PngPixels(Dataset):
    """(uint8 pixels, label) of each image of a PNG set (teddy.distilled_set), decoded in workers."""

    def __init__(self, png_set):
        self.files, self.meta = png_set.files, png_set.meta

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[int(i)]
        return _read_pixels(path, int(self.meta["channels"]), int(self.meta["image_size"])), int(label)


def _is_png_set(dataset) -> bool:
    return isinstance(dataset, PngSetDataset)


class _PlannedFolder(Dataset):
    """An ImageFolder item looked up by (index, box): the box is cropped from the full-resolution
    image and resized to `image_size` in the worker; without a box, the dataset's own transform.
    A distilled PNG set (stored at its training size) is only decoded: its items are uint8
    pixels, normalised and cropped after the copy to the device, as in memory."""

    def __init__(self, dataset, image_size: int, mean, std):
        base, self.indices = dataset, None
        if hasattr(dataset, "base") and hasattr(dataset, "indices"):  # teddy.data.FolderSubset
            base, self.indices = dataset.base, dataset.indices
        self.png = _PngPixels(base) if _is_png_set(base) else None
        # torchvision's ImageFolder lists (path, class) in `samples`; teddy.distilled_set's PNG set in `files`
        self.samples = getattr(base, "samples", None) or getattr(base, "files", None)
        if self.samples is None:
            raise TeddyError(f"{type(dataset).__name__} is neither in memory nor an ImageFolder")
        self.loader = getattr(base, "loader", None) or _open_rgb
        self.base, self.image_size = base, int(image_size)
        self.mean, self.std = (list(mean) if mean is not None else None), (list(std) if std is not None else None)

    def __len__(self):
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, key):
        from torchvision.transforms import functional as TF

        i, box = key
        j = int(self.indices[i]) if self.indices is not None else int(i)
        if self.png is not None:
            return self.png[j]
        if box is None:
            x, y = self.base[j]
            return x, int(y)
        path, y = self.samples[j]
        try:
            img = self.loader(path)
        except Exception as exc:
            raise TeddyError(f"unreadable image {path} ({type(exc).__name__}: {exc})") from None
        if len(self.mean) == 1:
            img = img.convert("L")
        w, h = img.size
        x0, y0, x1, y1 = box
        top, left = int(round(y0 * h)), int(round(x0 * w))
        height, width = max(1, int(round((y1 - y0) * h))), max(1, int(round((x1 - x0) * w)))
        img = TF.resized_crop(img, top, left, height, width, [self.image_size, self.image_size], antialias=True)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std), int(y)


class _PlanSampler:
    """Batch sampler over the current plan: yields this process's micro-batches in order, as
    lists of (index, box) keys. Set `plan` before each epoch; works with persistent workers
    because the sampler runs in the main process."""

    def __init__(self):
        self.items: list[list] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)


class StudentData:
    """Micro-batches of a plan, for process `rank` of `world`, `accumulate` steps per batch.

    One code path for every source: the images of a micro-batch are gathered (host tensors of
    TensorImageDataset; uint8 pixels of a PixelSet, on its device; or decoded by DataLoader
    workers), moved to `device`, normalised when they are pixels, then cropped (one roi_align),
    flipped, shifted, given the DC or DSA augmentation and mixed on `device`. The plan's
    per-image tensors go to the device once per epoch, so a step does no host round trip.
    ImageFolder trees of real images are the one exception: their crops are taken from the
    full-resolution image in the workers."""

    def __init__(self, dataset, image_size: int, device: torch.device, *, mean=None, std=None,
                 num_workers: int = 0, rank: int = 0, world: int = 1, accumulate: int = 1):
        self.dataset, self.image_size, self.device = dataset, int(image_size), device
        self.rank, self.world, self.accumulate = int(rank), int(world), int(accumulate)
        self.in_memory = isinstance(dataset, (TensorImageDataset, PixelSet))
        self.loader, self.pixel_stats = None, None
        if isinstance(dataset, PixelSet):
            self.source = "pixels"
            set_mean, set_std = dataset.mean, dataset.std
        elif isinstance(dataset, TensorImageDataset):
            self.source = "tensor"
        else:
            self.folder = _PlannedFolder(dataset, image_size, mean, std)
            self.source = "png" if self.folder.png is not None else "folder"
            if self.source == "png":
                set_mean, set_std = self.folder.png.meta["mean"], self.folder.png.meta["std"]
            self.sampler = _PlanSampler()
            workers = int(num_workers)
            self.loader = DataLoader(self.folder, batch_sampler=self.sampler, num_workers=workers,
                                     pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        if self.source in ("pixels", "png"):  # teddy.distilled_set.from_uint8's constants, made once
            self.pixel_stats = tuple(torch.tensor([float(v) for v in vs], dtype=torch.float32).view(1, -1, 1, 1)
                                     .to(device) for vs in (set_mean, set_std))

    def my_chunks(self, n: int) -> list[torch.Tensor]:
        chunks = chunk_positions(n, self.world * self.accumulate)
        return chunks[self.rank * self.accumulate:(self.rank + 1) * self.accumulate]

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """teddy.distilled_set.from_uint8, with its constants already on the device."""
        mean, std = self.pixel_stats
        return (pixels.float().div_(255.0) - mean) / std

    @staticmethod
    def _dc_noise(plan: dict, step: int, lo: int, hi: int, span: slice, x: torch.Tensor):
        """The normal numbers of DC's noise operation for a micro-batch: drawn for the whole batch
        on the host from the batch's plan seed, then sliced, so placements, devices and chunkings
        agree; None without the noise operation."""
        if plan.get("dc_noise_seed") is None:
            return None
        g = torch.Generator().manual_seed(int(plan["dc_noise_seed"][step]))
        normal = torch.randn(hi - lo, *x.shape[1:], generator=g)[span.start - lo:span.stop - lo]
        return float(plan["dc_noise"]) * normal

    def epoch(self, plan: dict):
        """Yield the MicroBatch of every step of the plan that belongs to this process."""
        if plan["chunks"] != self.world * self.accumulate:
            raise TeddyError(f"plan drawn for {plan['chunks']} chunks per batch, run has "
                             f"{self.world} processes x {self.accumulate} accumulation steps")
        jobs = []
        for step in range(plan_batches(plan)):
            lo, hi = int(plan["bounds"][step]), int(plan["bounds"][step + 1])
            for micro, pos in enumerate(self.my_chunks(hi - lo)):
                # chunks are contiguous: a slice of the plan's per-image tensors
                span = slice(lo + int(pos[0]), lo + int(pos[-1]) + 1) if len(pos) else slice(lo, lo)
                jobs.append((step, micro, lo, hi, pos, span))
        dev = self.device
        boxes = plan["boxes"]
        crop = boxes is not None and self.source != "folder"  # folder items come cropped from the workers
        boxes_dev = boxes.to(dev) if crop else None
        flips, perms = plan["flip"].to(dev), plan["mix_perm"].to(dev).long()
        dc = plan.get("dc_op") is not None
        if dc:  # which operations occur is read on the host, once an epoch
            dc_op, dc_arg, dc_used = plan["dc_op"].to(dev), plan["dc_arg"].to(dev), set(plan["dc_op"].unique().tolist())
        dsa = plan.get("dsa_family") is not None
        dsa_param = plan["dsa_param"].to(dev) if dsa else None
        patches = plan.get("patch_cols") is not None
        if patches and self.source == "folder":
            raise TeddyError("augment.shuffle_patches applies to distilled sets, not to ImageFolder trees of real "
                             "images (base training)")
        patch_cols, patch_rows = (plan["patch_cols"].to(dev), plan["patch_rows"].to(dev)) if patches else (None, None)
        if self.source == "tensor":
            order = plan["order"].long()
            raw = ((self.dataset.images[order[span]], self.dataset.targets[order[span]]) for *_, span in jobs)
        elif self.source == "pixels":
            order = plan["order"].to(self.dataset.pixels.device).long()
            raw = ((self.dataset.pixels[order[span]], self.dataset.targets[order[span]]) for *_, span in jobs)
        else:
            boxed = boxes is not None and self.source == "folder"  # PNG items are cropped on the device
            self.sampler.items = [[(int(plan["order"][lo + p]), boxes[lo + p].tolist() if boxed else None)
                                   for p in pos.tolist()] for _, _, lo, _, pos, _ in jobs]
            raw = iter(self.loader)
        for (step, micro, lo, hi, pos, span), (x, y) in zip(jobs, raw):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if self.pixel_stats is not None:
                x = self._normalise(x)
            if patches:  # RDED: ShufflePatches before the crop
                x = shuffle_patches(x, patch_cols[span], patch_rows[span])
            if crop:
                x = roi_crop(x, boxes_dev[span])
            x = flip_and_shift(x, flips[span], plan["shift"][step].tolist())
            if dc:
                x = apply_dc_augment(x, dc_op[span], dc_arg[span], dc_used, self._dc_noise(plan, step, lo, hi, span, x))
            if dsa:
                x = apply_dsa(x, int(plan["dsa_family"][step]), dsa_param[span])
            kind, lam = int(plan["mix_kind"][step]), float(plan["mix_lam"][step])
            local_perm = perms[span] - (span.start - lo) if len(pos) else perms[span]
            x = apply_mix(x, kind, lam, plan["mix_box"][step].tolist(), local_perm)
            yield MicroBatch(step, micro, lo + pos, x, y, kind, lam, local_perm, hi - lo)


# --- which path a distilled set takes ---------------------------------------------------------

DEVICE_MEMORY_FRACTION = 0.25  # evaluate.device_memory_fraction's default


def device_memory_bytes(device: torch.device | None) -> int | None:
    """The device's total memory in bytes; None on CPU (where evaluate.in_memory_max_mb decides)."""
    if device is None or device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def student_set_placement(pixel_bytes: int, device: torch.device | None, in_memory_max_mb: float = 1024,
                          device_memory_fraction: float = DEVICE_MEMORY_FRACTION) -> str:
    """Where a distilled set of `pixel_bytes` uint8 pixels is held: "device" (a PixelSet on the
    device) when it fits `device_memory_fraction` of the device's memory, else "memory"
    (normalised float32 on the host) when that is within `in_memory_max_mb`, else "stream"."""
    total = device_memory_bytes(device)
    if total is not None and pixel_bytes <= float(device_memory_fraction) * total:
        return "device"
    return "memory" if pixel_bytes * 4 / 2**20 <= float(in_memory_max_mb) else "stream"


def load_set_pixels(set_meta, device: torch.device, num_workers: int = 0) -> tuple[PixelSet, dict]:
    """A PNG set decoded once (by `num_workers` DataLoader workers) into a PixelSet on `device`,
    written batch by batch into one preallocated uint8 tensor there."""
    meta, png_set = read_set(set_meta)
    channels, size = int(meta["channels"]), int(meta["image_size"])
    pixels = torch.empty(len(png_set), channels, size, size, dtype=torch.uint8, device=device)
    loader = DataLoader(_PngPixels(png_set), batch_size=256, num_workers=int(num_workers),
                        pin_memory=device.type == "cuda")
    at = 0
    for batch, _ in loader:
        pixels[at:at + len(batch)].copy_(batch, non_blocking=True)
        at += len(batch)
    return PixelSet(pixels, png_set.targets, meta["class_names"], meta["mean"], meta["std"]), meta


def load_student_set(set_meta, in_memory_max_mb: float = 1024, num_workers: int = 0, *,
                     device: torch.device | None = None,
                     device_memory_fraction: float = DEVICE_MEMORY_FRACTION):
    """(dataset, meta) of a distilled PNG set, placed by `student_set_placement`: decoded once
    into uint8 pixels on `device` (PixelSet) when they fit `device_memory_fraction` of its
    memory (CUDA only); else whole in host memory (TensorImageDataset) when its float32 tensor
    fits in `in_memory_max_mb`; else read lazily by `num_workers` DataLoader workers, so a job's
    memory is bounded by batch and workers rather than by the set. Every placement gives the
    same batches for the same plan."""
    meta = check_set(set_meta)
    n = sum(int(c) for c in meta["counts"])
    pixel_bytes = n * int(meta["channels"]) * int(meta["image_size"]) ** 2
    where = student_set_placement(pixel_bytes, device, in_memory_max_mb, device_memory_fraction)
    if where == "device":
        return load_set_pixels(set_meta, device, num_workers)
    if where == "memory":
        images, labels, meta = load_set_tensors(set_meta)
        return TensorImageDataset(images, labels, meta["class_names"]), meta
    meta, dataset = read_set(set_meta)
    dataset.num_workers = int(num_workers)
    return dataset, meta
