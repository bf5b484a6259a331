"""The student (and base-training) data pipeline: an epoch plan drawn up front, then batches
built from it, in memory or through DataLoader workers.

An epoch plan is a dict of flat tensors, drawn from one seeded generator in the main process:
the shuffled image order, one random-resized-crop box per image (relative coordinates, so the
same box applies to a 28-pixel tensor or a full-resolution JPEG), a flip per image, a shift per
batch and, as config switches, CutMix or Mixup per batch. The same plan drives the online-KD
student, the stored-label writer (teddy.label_store, which saves it beside the teacher's
logits) and a student trained from stored labels, so all three see the very same pixels.

Small sets held in memory (TensorImageDataset) crop every image of a batch in one
torchvision.ops.roi_align call; ImageFolder data (real trees, the distilled PNG sets) is decoded
and cropped from the full-resolution image inside DataLoader workers (persistent, pinned
memory on CUDA). Without `crop`, ImageFolder items keep the dataset's own transform (resize and
centre crop), and the draws are those of the older batch-level augmentation, so runs without
crop are unchanged.

Followed: SRe2L's and RDED's student recipes (RandomResizedCrop with the dataset's scale range,
flip, CutMix with the box-area label weight of Yun et al. 2019, Mixup of Zhang et al. 2018),
read in VILA-Lab/SRe2L and LINs-lab/RDED; the crop sampling is torchvision's
RandomResizedCrop.get_params without its retry loop (the box is clamped to the image instead).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from teddy.augment import apply_augment
from teddy.data import TensorImageDataset
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


def plan_epoch(num_images: int, batch_size: int, image_size: int, cfg: dict, generator: torch.Generator,
               chunks: int = 1) -> dict:
    """One epoch's plan (see the module docstring). The draw order (order, then per batch: crop
    boxes, flips, shift, mix) keeps runs without crop and mix identical to the earlier
    batch-level augmentation of teddy.augment."""
    order = torch.randperm(num_images, generator=generator)
    starts = list(range(0, num_images, batch_size))
    if chunks > 1:  # every process and accumulation step needs at least one image
        starts = [s for s in starts if min(batch_size, num_images - s) >= chunks]
    # an empty augment section means none; otherwise teddy.augment's defaults (crop, scale 0.5-1, flip)
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
    return {"order": order.int(), "bounds": torch.tensor(bounds, dtype=torch.int32),
            "boxes": torch.cat(boxes) if boxes else None,
            "flip": torch.cat(flips) if flips else torch.zeros(0, dtype=torch.bool),
            "shift": torch.stack(shifts).short() if shifts else torch.zeros(0, 2, dtype=torch.int16),
            "mix_kind": torch.tensor(kinds, dtype=torch.int8), "mix_lam": torch.tensor(lams, dtype=torch.float32),
            "mix_box": torch.tensor(mix_boxes, dtype=torch.int16).view(-1, 4),
            "mix_perm": torch.cat(perms).int() if perms else torch.zeros(0, dtype=torch.int32),
            "chunks": int(chunks)}


def plan_batches(plan: dict) -> int:
    return len(plan["bounds"]) - 1


# --- applying it -----------------------------------------------------------------------------

def roi_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image of `x` to its own relative box and resize back to x's size, in one call."""
    from torchvision.ops import roi_align

    h, w = x.shape[-2:]
    scale = torch.tensor([w, h, w, h], dtype=x.dtype, device=x.device)
    rois = torch.cat([torch.arange(len(x), device=x.device, dtype=x.dtype).unsqueeze(1),
                      boxes.to(x.device, x.dtype) * scale], dim=1)
    # sampling_ratio 1: one bilinear sample at each output pixel centre (a full box is the identity)
    return roi_align(x, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


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


class _PlannedFolder(Dataset):
    """An ImageFolder item looked up by (index, box): the box is cropped from the full-resolution
    image and resized to `image_size` in the worker; without a box, the dataset's own transform."""

    def __init__(self, dataset, image_size: int, mean, std):
        base, self.indices = dataset, None
        if hasattr(dataset, "base") and hasattr(dataset, "indices"):  # teddy.data.FolderSubset
            base, self.indices = dataset.base, dataset.indices
        # torchvision's ImageFolder lists (path, class) in `samples`; teddy.distilled_set's PNG set in `files`
        self.samples = getattr(base, "samples", None) or getattr(base, "files", None)
        if self.samples is None:
            raise TeddyError(f"{type(dataset).__name__} is neither in memory nor an ImageFolder")
        self.loader = getattr(base, "loader", None) or _open_rgb
        self.base, self.image_size, self.mean, self.std = base, int(image_size), list(mean), list(std)

    def __len__(self):
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, key):
        from torchvision.transforms import functional as TF

        i, box = key
        j = int(self.indices[i]) if self.indices is not None else int(i)
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
    """Micro-batches of a plan, for process `rank` of `world`, `accumulate` steps per batch."""

    def __init__(self, dataset, image_size: int, device: torch.device, *, mean=None, std=None,
                 num_workers: int = 0, rank: int = 0, world: int = 1, accumulate: int = 1):
        self.dataset, self.image_size, self.device = dataset, int(image_size), device
        self.rank, self.world, self.accumulate = int(rank), int(world), int(accumulate)
        self.in_memory = isinstance(dataset, TensorImageDataset)
        self.loader = None
        if not self.in_memory:
            self.folder = _PlannedFolder(dataset, image_size, mean, std)
            self.sampler = _PlanSampler()
            workers = int(num_workers)
            self.loader = DataLoader(self.folder, batch_sampler=self.sampler, num_workers=workers,
                                     pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def my_chunks(self, n: int) -> list[torch.Tensor]:
        chunks = chunk_positions(n, self.world * self.accumulate)
        return chunks[self.rank * self.accumulate:(self.rank + 1) * self.accumulate]

    def epoch(self, plan: dict):
        """Yield the MicroBatch of every step of the plan that belongs to this process."""
        if plan["chunks"] != self.world * self.accumulate:
            raise TeddyError(f"plan drawn for {plan['chunks']} chunks per batch, run has "
                             f"{self.world} processes x {self.accumulate} accumulation steps")
        jobs = []
        for step in range(plan_batches(plan)):
            lo, hi = int(plan["bounds"][step]), int(plan["bounds"][step + 1])
            for micro, pos in enumerate(self.my_chunks(hi - lo)):
                jobs.append((step, micro, lo, hi, pos))
        boxes = plan["boxes"]
        if self.in_memory:
            raw = (self._memory_batch(plan, lo, pos) for _, _, lo, _, pos in jobs)
        else:
            self.sampler.items = [[(int(plan["order"][lo + p]), None if boxes is None else boxes[lo + p].tolist())
                                   for p in pos.tolist()] for _, _, lo, _, pos in jobs]
            raw = iter(self.loader)
        for (step, micro, lo, hi, pos), (x, y) in zip(jobs, raw):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if boxes is not None and self.in_memory:
                x = roi_crop(x, boxes[lo + pos])
            shift = [int(v) for v in plan["shift"][step]]
            x = apply_augment(x, {"flip": plan["flip"][lo + pos].tolist(), "shift": tuple(shift)})
            kind, lam = int(plan["mix_kind"][step]), float(plan["mix_lam"][step])
            local_perm = (plan["mix_perm"][lo + pos].long() - int(pos[0])) if len(pos) else pos
            x = apply_mix(x, kind, lam, plan["mix_box"][step].tolist(), local_perm)
            yield MicroBatch(step, micro, lo + pos, x, y, kind, lam, local_perm.to(self.device), hi - lo)

    def _memory_batch(self, plan, lo, pos):
        idx = plan["order"][lo + pos].long()
        return self.dataset.images[idx], self.dataset.targets[idx]


def load_student_set(set_meta, in_memory_max_mb: float = 1024, num_workers: int = 0):
    """(dataset, meta) of a distilled PNG set: whole in memory (TensorImageDataset) when its
    float32 tensor fits in `in_memory_max_mb`, else read lazily by `num_workers` DataLoader
    workers, so a job's memory is bounded by batch and workers rather than by the set."""
    from teddy.distilled_set import check_set, load_set_tensors, read_set

    meta = check_set(set_meta)
    n = sum(int(c) for c in meta["counts"])
    size_mb = n * int(meta["channels"]) * int(meta["image_size"]) ** 2 * 4 / 2**20
    if size_mb <= in_memory_max_mb:
        images, labels, meta = load_set_tensors(set_meta)
        return TensorImageDataset(images, labels, meta["class_names"]), meta
    meta, dataset = read_set(set_meta)
    dataset.num_workers = int(num_workers)
    return dataset, meta
