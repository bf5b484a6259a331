"""The distilled set on disk: an ImageFolder tree of lossless uint8 PNGs plus meta.json.

    <set>/images/<class_folder>/<j:05d>.png   one folder per class, j = index within the class
    <set>/meta.json                           labels, class names, normalisation, config, hash

`class_folder` is the zero-padded class index, so the sorted folder order that torchvision's
`ImageFolder` (and the peers' evaluation code) uses to number classes is the class index.
Images are stored de-normalised and quantised to uint8: any tool reads them, a set of
ImageNet-1K at IPC 100 is a few GB of PNGs rather than 60 GB of float32, and every writer
and reader agrees on one rounding (`to_uint8`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from teddy.errors import TeddyError
from teddy.io import atomic_path, load_json, save_json

FORMAT_VERSION = 2
IMAGE_SUFFIX = ".png"


def class_folder(c: int) -> str:
    return f"{int(c):04d}"


def image_name(index_in_class: int) -> str:
    return f"{int(index_in_class):05d}{IMAGE_SUFFIX}"


def _stats(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=like.device).view(1, -1, 1, 1)


def to_uint8(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised N x C x H x W float images -> uint8 pixels (de-normalised, clipped, rounded)."""
    pixels = images.detach().float() * _stats(std, images) + _stats(mean, images)
    return pixels.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).cpu()


def from_uint8(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 N x C x H x W pixels -> normalised float32 images (the inverse of `to_uint8` up to rounding)."""
    x = pixels.float().div_(255.0)
    return (x - _stats(mean, x)) / _stats(std, x)


def quantise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """What a set looks like after a round trip through its PNGs."""
    return from_uint8(to_uint8(images, mean, std), mean, std).to(images.device)


def _write_png(pixels_chw: torch.Tensor, path: Path) -> None:
    array = pixels_chw.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array, mode="RGB")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def index_within_class(labels: torch.Tensor) -> list[int]:
    """For images listed in any order: each one's position among the earlier images of its class."""
    seen: dict[int, int] = {}
    positions = []
    for c in labels.tolist():
        positions.append(seen.get(c, 0))
        seen[c] = positions[-1] + 1
    return positions


def write_images(images_dir, images: torch.Tensor, labels: torch.Tensor, index_in_class, mean, std) -> list[str]:
    """Write normalised images as PNGs under images_dir/<class_folder>/; returns the relative paths."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"bad distilled batch: images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    index_in_class = [int(j) for j in index_in_class]
    if len(index_in_class) != len(images):
        raise ValueError("index_in_class must give one index per image")
    images_dir = Path(images_dir)
    pixels = to_uint8(images, mean, std)
    written = []
    for px, c, j in zip(pixels, labels.tolist(), index_in_class):
        rel = f"{class_folder(c)}/{image_name(j)}"
        _write_png(px, images_dir / rel)
        written.append(rel)
    return written


def set_hash(images_dir) -> str:
    """sha256 over the sorted relative paths and bytes of every image: identifies one set."""
    images_dir = Path(images_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in images_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(images_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_meta(set_dir, *, method: str, ipc: int, class_names, mean, std, channels: int, image_size: int,
               config: dict, extra: dict | None = None) -> dict:
    """Check the images already under set_dir/images and write set_dir/meta.json (written last)."""
    set_dir = Path(set_dir)
    num_classes = len(class_names)
    folders = [class_folder(c) for c in range(num_classes)]
    counts = []
    for folder in folders:
        d = set_dir / "images" / folder
        counts.append(len(list(d.glob(f"*{IMAGE_SUFFIX}"))) if d.is_dir() else 0)
    meta = {"format_version": FORMAT_VERSION, "method": method, "ipc": int(ipc), "num_classes": num_classes,
            "class_names": list(class_names), "class_folders": folders, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "channels": int(channels), "image_size": int(image_size),
            "counts": counts, "set_hash": set_hash(set_dir / "images"), "config": config, **(extra or {})}
    bad = [(f, n) for f, n in zip(folders, counts) if n != int(ipc)]
    if bad:
        raise TeddyError(f"distilled set {set_dir}: class folders {bad[:5]} hold a number of images other "
                         f"than IPC {ipc}")
    save_json(meta, set_dir / "meta.json")
    return meta


def _meta_path(set_dir_or_meta) -> Path:
    p = Path(set_dir_or_meta)
    return p if p.name == "meta.json" else p / "meta.json"


def check_set(set_dir_or_meta) -> dict:
    """Read meta.json and check the tree against it; one line naming the path on any mismatch."""
    meta_path = _meta_path(set_dir_or_meta)
    meta = load_json(meta_path)
    missing = {"class_names", "class_folders", "mean", "std", "counts", "channels", "image_size"} - set(meta)
    if missing:
        raise TeddyError(f"distilled set meta {meta_path} lacks keys {sorted(missing)}")
    images_dir = meta_path.parent / "images"
    for folder, count in zip(meta["class_folders"], meta["counts"]):
        d = images_dir / folder
        if not d.is_dir():
            raise TeddyError(f"distilled set {images_dir}: class folder {folder} is missing")
        found = len(list(d.glob(f"*{IMAGE_SUFFIX}")))
        if found != int(count):
            raise TeddyError(f"distilled set {d}: {found} images, meta.json says {count}")
    return meta


def _read_pixels(path: Path, channels: int, image_size: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise TeddyError(f"unreadable image in distilled set: {path} ({exc})") from None
    if array.shape[:2] != (image_size, image_size):
        raise TeddyError(f"image {path} is {array.shape[1]}x{array.shape[0]}, the set's meta says "
                         f"{image_size}x{image_size}")
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1)


def image_files(set_dir_or_meta, meta: dict | None = None) -> list[tuple[Path, int]]:
    """(path, label) of every image of a checked set, in class then file-name order."""
    meta_path = _meta_path(set_dir_or_meta)
    meta = meta or check_set(meta_path)
    images_dir = meta_path.parent / "images"
    return [(p, c) for c, folder in enumerate(meta["class_folders"])
            for p in sorted((images_dir / folder).glob(f"*{IMAGE_SUFFIX}"))]


class PngSetDataset(Dataset):
    """The set's images as normalised float tensors, read lazily (DataLoader workers decode them)."""

    def __init__(self, set_dir_or_meta):
        self.meta = check_set(set_dir_or_meta)
        self.files = image_files(set_dir_or_meta, self.meta)
        self.targets = torch.tensor([c for _, c in self.files], dtype=torch.long)
        self.class_names = list(self.meta["class_names"])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[i]
        pixels = _read_pixels(path, int(self.meta["channels"]), int(self.meta["image_size"]))
        return from_uint8(pixels.unsqueeze(0), self.meta["mean"], self.meta["std"])[0], label


def read_set(set_dir_or_meta) -> tuple[dict, PngSetDataset]:
    dataset = PngSetDataset(set_dir_or_meta)
    return dataset.meta, dataset


def load_set_tensors(set_dir_or_meta) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The whole set in memory: (normalised images, labels, meta). For small sets (the demo)."""
    meta = check_set(set_dir_or_meta)
    files = image_files(set_dir_or_meta, meta)
    channels, size = int(meta["channels"]), int(meta["image_size"])
    pixels = torch.stack([_read_pixels(p, channels, size) for p, _ in files]) if files else \
        torch.zeros(0, channels, size, size, dtype=torch.uint8)
    labels = torch.tensor([c for _, c in files], dtype=torch.long)
    return from_uint8(pixels, meta["mean"], meta["std"]), labels, meta
