"""The student (and base-training) data pipeline: an epoch plan drawn up front, then batches
built from it, in memory or through DataLoader workers.

An epoch plan is a dict of flat tensors, drawn from one seeded generator in the main process:
the shuffled image order, one random-resized-crop box per image (relative coordinates, so the
same box applies to a 28-pixel tensor or a full-resolution JPEG), a flip per image, a shift per
batch and, as config switches, CutMix or Mixup per batch. The same plan drives the online-KD
student, the stored-label writer (teddy.label_store, which saves it beside the teacher's
logits) and a student trained from stored labels, so all three see the very same pixels.

A distilled set lies in one of three places (`load_student_set`): as uint8 pixels on the device
(PixelSet, on CUDA when it fits evaluate.device_memory_fraction of the GPU's memory), as
normalised float32 tensors in host memory (TensorImageDataset, within evaluate.in_memory_max_mb),
or as PNGs decoded by DataLoader workers (persistent, pinned memory on CUDA). All three take the
same path to a batch (StudentData.epoch): gathered, on the device, normalised, every image
cropped to its own box in one torchvision.ops.roi_align call, flipped, shifted and mixed, so the
same plan gives the same batches bit for bit on one device, and a label store written on one
placement serves the others. ImageFolder trees of real images (base training) are cropped from
the full-resolution image inside the workers. Without `crop`, ImageFolder items keep the
dataset's own transform (resize and centre crop), and the draws are those of the older
batch-level augmentation, so runs without crop are unchanged.

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
    """Crop each image of `x` to its own relative box and resize back to x's size, in one call
    (on x's device, with no host round trip)."""
    from torchvision.ops import roi_align

    h, w = x.shape[-2:]
    b = boxes.to(x.device, x.dtype)
    rois = torch.stack([torch.arange(len(x), device=x.device, dtype=x.dtype),
                        b[:, 0] * w, b[:, 1] * h, b[:, 2] * w, b[:, 3] * h], dim=1)
    # sampling_ratio 1: one bilinear sample at each output pixel centre (a full box is the identity)
    return roi_align(x, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


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
        from teddy.distilled_set import from_uint8

        return from_uint8(self.pixels[i:i + 1], self.mean, self.std)[0], self.targets[i]


class _PngPixels(Dataset):
    """(uint8 pixels, label) of each image of a PNG set (teddy.distilled_set), decoded in workers."""

    def __init__(self, png_set):
        self.files, self.meta = png_set.files, png_set.meta

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from teddy.distilled_set import _read_pixels

        path, label = self.files[int(i)]
        return _read_pixels(path, int(self.meta["channels"]), int(self.meta["image_size"])), int(label)


def _is_png_set(dataset) -> bool:
    from teddy.distilled_set import PngSetDataset

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
    flipped, shifted and mixed on `device`. The plan's per-image tensors go to the device once
    per epoch, so a step does no host round trip. ImageFolder trees of real images are the one
    exception: their crops are taken from the full-resolution image in the workers."""

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
            if crop:
                x = roi_crop(x, boxes_dev[span])
            x = flip_and_shift(x, flips[span], plan["shift"][step].tolist())
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
    from teddy.distilled_set import read_set

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
    from teddy.distilled_set import check_set, load_set_tensors, read_set

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
