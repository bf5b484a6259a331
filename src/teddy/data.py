"""Readers of the in-memory datasets (IDX: MNIST, Fashion-MNIST; CIFAR pickles), the dataset
containers, the train/validation split and batching.

Which dataset is read how, with which facts, is the registry's (teddy.datasets); class-folder
trees (Tiny-ImageNet, ImageNet-1K, your own) are read by teddy.image_folder. Small datasets are
read whole into memory as normalised tensors. Nothing here downloads unless `download: true` is
set in the config. Distillation augmentation: teddy.augment.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from teddy.errors import TeddyError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple
    std: tuple


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


def read_idx_dataset(dataset_cfg: dict, train: bool, info: DatasetInfo, class_names=()) -> TensorImageDataset:
    """MNIST-style IDX files in dataset.root (train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte,
    plain or .gz)."""
    root = Path(dataset_cfg["root"])
    prefix = "train" if train else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise TeddyError(f"{info.name} IDX files in {root} disagree: images {images.shape}, labels {labels.shape}")
    x = _normalise(torch.from_numpy(images.copy()).unsqueeze(1), info)
    return TensorImageDataset(x, torch.from_numpy(labels.astype(np.int64)), class_names)


# CIFAR: torchvision's python-pickle format -------------------------------------------------

def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise TeddyError(f"dataset file missing: {path} (config key dataset.root)")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except Exception as exc:
        raise TeddyError(f"corrupt CIFAR batch {path}: {exc}") from None


def read_cifar(dataset_cfg: dict, train: bool, info: DatasetInfo, folder: str, train_files, test_files,
               meta: str, names_key: str, labels_key: str) -> TensorImageDataset:
    """torchvision's CIFAR layout: `<dataset.root>/<folder>/` holding pickled batches and a meta file."""
    folder = Path(dataset_cfg["root"]) / folder
    files = train_files if train else test_files
    data, labels = [], []
    for name in files:
        entry = _unpickle(folder / name)
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[labels_key])
    class_names = _unpickle(folder / meta)[names_key]
    x = _normalise(torch.from_numpy(np.concatenate(data)), info)
    return TensorImageDataset(x, torch.tensor(labels, dtype=torch.long), class_names)


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


def download(torchvision_class: str, root, mirror: str | None = None) -> None:
    """Both splits through torchvision (`datasets.<torchvision_class>`) into `root`, once.

    `mirror` (config key dataset.download_mirror) is a base URL serving torchvision's file names
    (None: torchvision's own servers). Safe when several jobs start at once: one downloads while
    the others wait on a lock file in `root`; the files are fetched into a temporary folder there
    and moved into place one by one (each appears complete or not at all), then a marker file says
    the download is done. With the marker, or with the files already there, nothing is fetched
    (an offline rerun works). A failed download raises a one-line TeddyError naming the URL and
    leaves nothing under the final names."""
    root = Path(root)
    done = root / f".{torchvision_class}.downloaded"
    if done.is_file():
        return
    base = _torchvision_dataset(torchvision_class)
    if _present(base, root):
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_file = open(root / f".{torchvision_class}.lock", "a")
    except OSError as exc:
        raise TeddyError(f"cannot download {torchvision_class} into {root} (config key dataset.root): "
                         f"{exc.strerror or exc}") from None
    with lock_file, _exclusive(lock_file, root):
        if done.is_file():
            return
        if not _present(base, root):
            _fetch(_with_mirror(base, mirror), root)
        source = mirror or "torchvision's mirrors"
        tmp = done.with_name(done.name + ".tmp")
        tmp.write_text(f"{torchvision_class} downloaded from {source}\n")
        os.replace(tmp, done)


def _torchvision_dataset(name: str):
    from torchvision import datasets

    return getattr(datasets, name)


def _present(cls, root: Path) -> bool:
    """Both splits readable by torchvision from `root` without downloading."""
    try:
        for train in (True, False):
            cls(str(root), train=train, download=False)
    except Exception:  # missing (RuntimeError) or unreadable files: (re)download
        return False
    return True


def _with_mirror(base, mirror: str | None):
    """`base`, or a subclass fetching from `mirror` (torchvision's class stays as it is)."""
    if not mirror:
        return base
    url = mirror.rstrip("/") + "/"
    if hasattr(base, "mirrors"):  # MNIST, Fashion-MNIST: mirror + file name, per file
        attrs = {"mirrors": [url]}
    elif hasattr(base, "url") and hasattr(base, "filename"):  # CIFAR: one archive
        attrs = {"url": url + base.filename}
    else:
        raise TeddyError(f"dataset.download_mirror is not supported for torchvision's {base.__name__}")
    # the same class name: the MNIST family files its data under root/<class name>/raw
    return type(base.__name__, (base,), attrs)


@contextmanager
def _exclusive(lock_file, root: Path):
    """Hold an exclusive lock on the open `lock_file` (flock; elsewhere, filelock, which torch needs)."""
    try:
        import fcntl
    except ImportError:
        from filelock import FileLock

        with FileLock(lock_file.name + ".filelock"):
            yield
        return
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for another job downloading into {root}", file=sys.stderr, flush=True)
        fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)


def _fetch(cls, root: Path) -> None:
    """Download both splits into a temporary folder in `root`, then move its files into place."""
    name = cls.__name__
    for stale in root.glob(f".{name}.part-*"):  # left by a killed job (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    part = Path(tempfile.mkdtemp(prefix=f".{name}.part-", dir=root))
    try:
        try:
            for train in (True, False):
                cls(str(part), train=train, download=True)
        except (RuntimeError, OSError) as exc:
            raise TeddyError(f"cannot download {name} into {root} (dataset.download): {_download_error(cls, exc)}; "
                             f"set dataset.download_mirror to a reachable mirror or place the files under "
                             f"dataset.root") from None
        for src in sorted(p for p in part.rglob("*") if p.is_file()):
            dest = root / src.relative_to(part)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(part, ignore_errors=True)


def _download_error(cls, exc: Exception) -> str:
    """torchvision's error as one line, with the URL(s) it tried."""
    text = str(exc)
    failed = re.match(r"Error downloading (\S+):", text)
    tried = re.findall(r"Tried (\S+), got:\n(.*)", text)
    if failed and tried:  # the MNIST family: "Error downloading <file>:\nTried <mirror>, got:\n<error>"
        return "; ".join(f"{mirror}{failed.group(1)}: {error.strip()}" for mirror, error in tried)
    detail = " ".join(text.split())
    url = getattr(cls, "url", None)
    return f"{url}: {detail}" if url else detail


def held_out(n: int, val_fraction: float) -> int:
    """Images of a class of `n` held out for validation: n x val_fraction, rounded (halves up)."""
    return int(math.floor(n * float(val_fraction) + 0.5))


def split_indices(targets, val_fraction: float, seed: int):
    """A seeded, stratified split of range(len(targets)) into (train, validation) index tensors:
    every class c of n_c images holds out `held_out(n_c, val_fraction)` of them, drawn at random
    (one generator seeded by `seed`, classes in label order), so the training images left per
    class are exact and known before anything is read."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(targets, stable=True)
    counts = torch.bincount(targets) if len(targets) else torch.zeros(0, dtype=torch.long)
    val, start = [], 0
    for n in counts.tolist():
        members = order[start:start + n]
        val.append(members[torch.randperm(n, generator=generator)[: held_out(n, val_fraction)]])
        start += n
    val = torch.cat(val).sort().values if val else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(targets), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def split_counts(per_class, val_fraction: float, seed: int, limit: int | None = None) -> list[int]:
    """Training images per class left by `split_indices` (and `dataset.train_limit`): exact for
    any dataset without a limit (the split is stratified); with one, for a dataset stored class
    by class (labels 0, 0, ..., 1, 1, ...), as class folders are read."""
    targets = torch.repeat_interleave(torch.arange(len(per_class)), torch.as_tensor(list(per_class)))
    train_idx, _ = split_indices(targets, val_fraction, seed)
    if limit:
        train_idx = train_idx[: int(limit)]
    return torch.bincount(targets[train_idx], minlength=len(per_class)).tolist()


def class_indices(targets: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(targets == c, as_tuple=False).flatten() for c in range(num_classes)]


def draw_indices(idx: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` of the indices `idx`, drawn at random without replacement (all of them, shuffled,
    when there are fewer)."""
    return idx[torch.randperm(len(idx), generator=generator)[:count]]


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
