"""Real datasets in their on-disk formats, splits, normalisation and augmentation.

Small datasets (Fashion-MNIST, CIFAR) are read whole into memory as normalised tensors;
ImageFolder trees (Tiny-ImageNet, ImageNet-1K) are read lazily through torchvision.
Nothing here downloads unless `download: true` is set in the config.
"""

from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from teddy.errors import TeddyError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple
    std: tuple


DATASETS = {
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": DatasetInfo("tiny_imagenet", 200, 3, 64, IMAGENET_MEAN, IMAGENET_STD),
    "imagenet1k": DatasetInfo("imagenet1k", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD),
}


def dataset_info(dataset: str | dict) -> DatasetInfo:
    """The dataset's facts, from its config section (`cfg["dataset"]`) or its name. Class-folder
    datasets (image_folder, the ImageNet subsets) take theirs from the config, the folders and
    the cached normalisation file (teddy.image_folder)."""
    from teddy.image_folder import FOLDER_DATASETS, folder_info

    name = dataset["name"] if isinstance(dataset, dict) else dataset
    if name in FOLDER_DATASETS and isinstance(dataset, dict):
        return folder_info(dataset)
    if name not in DATASETS:
        raise TeddyError(f"unknown dataset '{name}' (config key dataset.name); known: "
                         f"{sorted(DATASETS) + list(FOLDER_DATASETS)}")
    return DATASETS[name]


# --- datasets --------------------------------------------------------------------------

class TensorImageDataset(Dataset):
    """Normalised images held in memory; `targets` is a LongTensor like torchvision's."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, class_names):
        self.images, self.targets, self.class_names = images, targets.long(), list(class_names)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]

    def subset(self, indices) -> "TensorImageDataset":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(self.images[indices], self.targets[indices], self.class_names)


class FolderSubset(Dataset):
    """A subset of an ImageFolder that keeps `targets` and `class_names`; `num_workers` is how
    many DataLoader worker processes decode its images (config key dataset.num_workers)."""

    def __init__(self, base, indices, num_workers: int = 0):
        self.base, self.indices = base, torch.as_tensor(indices, dtype=torch.long)
        self.targets = torch.as_tensor(base.targets)[self.indices]
        self.class_names = base.class_names
        self.num_workers = int(num_workers)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[int(self.indices[i])]

    def subset(self, indices):
        return FolderSubset(self.base, self.indices[torch.as_tensor(indices, dtype=torch.long)], self.num_workers)


def _normalise(images_uint8: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    x = images_uint8.float().div_(255.0)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


# MNIST and Fashion-MNIST: IDX files ----------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or .gz), checking the header against the payload size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise TeddyError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise TeddyError(f"not an unsigned-byte IDX file: {path}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims))
    if len(raw) != expected:
        raise TeddyError(f"truncated or oversized IDX file {path}: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise TeddyError(f"dataset file missing: {root / stem}[.gz] (config key dataset.root)")


def _load_fashion_mnist(root: Path, train: bool, info: DatasetInfo) -> TensorImageDataset:
    prefix = "train" if train else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise TeddyError(f"{info.name} IDX files in {root} disagree: images {images.shape}, labels {labels.shape}")
    x = _normalise(torch.from_numpy(images.copy()).unsqueeze(1), info)
    names = MNIST_CLASSES if info.name == "mnist" else FASHION_MNIST_CLASSES
    return TensorImageDataset(x, torch.from_numpy(labels.astype(np.int64)), names)


# CIFAR: torchvision's python-pickle format -------------------------------------------------

def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise TeddyError(f"dataset file missing: {path} (config key dataset.root)")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except Exception as exc:
        raise TeddyError(f"corrupt CIFAR batch {path}: {exc}") from None


def _load_cifar(root: Path, train: bool, info: DatasetInfo) -> TensorImageDataset:
    if info.name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        meta, names_key, labels_key = "batches.meta", "label_names", "labels"
    else:
        folder = root / "cifar-100-python"
        files = ["train"] if train else ["test"]
        meta, names_key, labels_key = "meta", "fine_label_names", "fine_labels"
    data, labels = [], []
    for name in files:
        entry = _unpickle(folder / name)
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[labels_key])
    class_names = _unpickle(folder / meta)[names_key]
    x = _normalise(torch.from_numpy(np.concatenate(data)), info)
    return TensorImageDataset(x, torch.tensor(labels, dtype=torch.long), class_names)


# ImageFolder trees (Tiny-ImageNet with val/ reorganised into class folders, ImageNet-1K) --

def _load_image_folder(root: Path, train: bool, info: DatasetInfo, num_workers: int = 0):
    from torchvision import datasets, transforms

    split_dir = root / ("train" if train else "val")
    if not split_dir.is_dir():
        raise TeddyError(f"dataset folder missing: {split_dir} (config key dataset.root)")
    size = info.image_size
    if info.name == "imagenet1k":
        resize = [transforms.Resize(256), transforms.CenterCrop(size)]
    else:
        resize = [transforms.Resize((size, size))]
    tf = transforms.Compose(resize + [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    try:
        ds = datasets.ImageFolder(str(split_dir), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise TeddyError(f"bad ImageFolder tree {split_dir}: {exc}") from None
    ds.targets = torch.as_tensor(ds.targets)
    ds.class_names = ds.classes
    words = root / "words.txt"  # Tiny-ImageNet ships wnid -> human names
    if words.is_file():
        mapping = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
        ds.class_names = [mapping.get(c, c).split(",")[0].strip() for c in ds.classes]
    return FolderSubset(ds, torch.arange(len(ds)), num_workers)


def _load_folder_dataset(dataset_cfg, root, train, info):
    from teddy.image_folder import load_folder_split

    return load_folder_split(dataset_cfg, train, info)


def reorganise_tiny_imagenet_val(root) -> int:
    """Move Tiny-ImageNet's val/images/*.JPEG into val/<wnid>/ folders using
    val/val_annotations.txt, so that val/ reads as an ImageFolder. Returns images moved."""
    val = Path(root) / "val"
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        raise TeddyError(f"not a raw Tiny-ImageNet val folder (no {annotations})")
    moved = 0
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        src = val / "images" / fields[0]
        if src.is_file():
            (val / fields[1]).mkdir(exist_ok=True)
            src.rename(val / fields[1] / fields[0])
            moved += 1
    images_dir = val / "images"
    if images_dir.is_dir() and not any(images_dir.iterdir()):
        images_dir.rmdir()
    return moved


def _download(name: str, root: Path) -> None:
    from torchvision import datasets

    getter = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10,
              "cifar100": datasets.CIFAR100}.get(name)
    if getter is None:
        raise TeddyError(f"dataset.download is not supported for '{name}'; place it under dataset.root")
    for train in (True, False):
        getter(str(root), train=train, download=True)


def load_split(dataset_cfg: dict, split: str):
    """Return the `train`, `val` (held out of train) or `test` split of the configured dataset."""
    info = dataset_info(dataset_cfg)
    root = Path(dataset_cfg["root"])
    if dataset_cfg.get("download", False):
        _download(info.name, root)
        if info.name in ("mnist", "fashion_mnist"):
            root = root / {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[info.name] / "raw"
    from teddy.image_folder import FOLDER_DATASETS

    if info.name in FOLDER_DATASETS:
        loader = partial(_load_folder_dataset, dataset_cfg)
    else:
        loader = {"mnist": _load_fashion_mnist, "fashion_mnist": _load_fashion_mnist, "cifar10": _load_cifar,
                  "cifar100": _load_cifar}.get(
            info.name, partial(_load_image_folder, num_workers=int(dataset_cfg.get("num_workers", 0))))
    if split == "test":
        return loader(root, False, info)
    if split not in ("train", "val", "train_full"):
        raise ValueError(f"unknown split {split}")
    full = loader(root, True, info)
    if split == "train_full":
        return full
    train_idx, val_idx = split_indices(len(full), dataset_cfg.get("val_fraction", 0.1), dataset_cfg.get("split_seed", 0))
    limit = dataset_cfg.get("train_limit")
    if limit:
        train_idx = train_idx[: int(limit)]
    return full.subset(train_idx if split == "train" else val_idx)


def split_indices(n: int, val_fraction: float, seed: int):
    """A seeded random split of range(n) into (train, validation) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def class_indices(targets: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(targets == c, as_tuple=False).flatten() for c in range(num_classes)]


def stack_items(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise some items of any dataset as (images, labels) tensors."""
    if isinstance(dataset, TensorImageDataset):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return dataset.images[idx], dataset.targets[idx]
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


# --- batches -----------------------------------------------------------------------------

def batches(dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None,
            device: torch.device, num_workers: int = 0):
    """Yield (x, y) batches on `device`. In-memory sets are sliced directly (fast on CPU); others
    go through a DataLoader with `num_workers` (default: the dataset's own `num_workers`) worker
    processes and, on CUDA, pinned memory."""
    if isinstance(dataset, TensorImageDataset):
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield dataset.images[idx].to(device, non_blocking=True), dataset.targets[idx].to(device, non_blocking=True)
        return
    num_workers = num_workers or getattr(dataset, "num_workers", 0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                        num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=False)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# --- augmentation (differentiable, replayable) -----------------------------------------

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


def denormalise(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x.cpu() * std + mean).clamp(0, 1)
