"""The dataset registry: per dataset name its facts and its reader, in one place.

    dataset_spec("cifar10")            -> DatasetSpec (reader, facts, image counts)
    dataset_info(cfg["dataset"])       -> DatasetInfo (classes, channels, image size, mean, std)
    load_split(cfg["dataset"], split)  -> the train / val / train_full / test split
    train_counts_per_class(cfg["dataset"]) -> training images per class after the validation split
    check_dataset_counts(cfg)          -> refuses an IPC above the smallest class

Readers: IDX files and CIFAR pickles (teddy.data, read whole into memory) and class folders
(teddy.image_folder, read lazily). Tiny-ImageNet and ImageNet-1K are presets of the class-folder
reader with fixed facts; `image_folder` and the ImageNet subsets take theirs from the config,
the tree and rule normalisation (`info` is None). A new dataset is one `register_dataset` call.
"""

from __future__ import annotations

from pathlib import Path

from teddy import data, image_folder
from teddy.data import DatasetInfo, split_counts, split_indices
from teddy.dataset_specs import DATASETS, dataset_spec, register_dataset  # noqa: F401  (the registry's names)
from teddy.errors import TeddyError

# --- facts, splits, counts ---------------------------------------------------------------

def dataset_info(dataset: str | dict) -> DatasetInfo:
    """The dataset's facts, from its config section (`cfg["dataset"]`) or its name. Class-folder
    datasets without fixed facts (image_folder, the ImageNet subsets) take theirs from the
    config, the folders and the cached normalisation file (teddy.image_folder.folder_info)."""
    name = dataset["name"] if isinstance(dataset, dict) else dataset
    spec = dataset_spec(name)
    if spec.info is not None:
        return spec.info
    if not isinstance(dataset, dict):
        raise TeddyError(f"dataset '{name}' takes its facts from its config section (dataset.*), not its name")
    return image_folder.folder_info(dataset)


def load_split(dataset_cfg: dict, split: str):
    """Return the `train`, `val` (held out of train), `train_full` or `test` split of the
    configured dataset."""
    spec = dataset_spec(dataset_cfg["name"])
    info = dataset_info(dataset_cfg)
    if dataset_cfg.get("download", False):
        if spec.download is None:
            raise TeddyError(f"dataset.download is not supported for '{spec.name}'; place it under dataset.root")
        data.download(spec.download, Path(dataset_cfg["root"]), dataset_cfg.get("download_mirror"))
        if spec.download_subdir:
            dataset_cfg = {**dataset_cfg, "root": str(Path(dataset_cfg["root"]) / spec.download_subdir)}
    reader = spec.reader or image_folder.read_class_folders  # a preset of the class-folder reader
    if split == "test":
        return reader(dataset_cfg, False, info)
    if split not in ("train", "val", "train_full"):
        raise ValueError(f"unknown split {split}")
    full = reader(dataset_cfg, True, info)
    if split == "train_full":
        return full
    train_idx, val_idx = split_indices(full.targets, dataset_cfg.get("val_fraction", 0.1),
                                       dataset_cfg.get("split_seed", 0))
    limit = dataset_cfg.get("train_limit")
    if limit:
        train_idx = train_idx[: int(limit)]
    return full.subset(train_idx if split == "train" else val_idx)


def train_counts_per_class(dataset_cfg: dict) -> list[int] | None:
    """Training images per class after the validation split (and dataset.train_limit), in label
    order: from the published counts for IDX and CIFAR (and Tiny-ImageNet without its tree),
    counted for class folders whose train/ is visible here; None when unknown (a tree not on
    this machine, or train_limit on a dataset whose file order is not by class)."""
    spec = dataset_spec(dataset_cfg["name"])
    per_class = None
    if spec.folders and (Path(dataset_cfg["root"]) / "train").is_dir():
        per_class = image_folder.train_counts(dataset_cfg)
    elif spec.train_per_class is not None:
        if dataset_cfg.get("train_limit") and not spec.folders:
            return None
        per_class = list(spec.train_per_class)
    if per_class is None:
        return None
    return split_counts(per_class, dataset_cfg.get("val_fraction", 0.1), dataset_cfg.get("split_seed", 0),
                        dataset_cfg.get("train_limit"))


def image_counts(dataset_cfg: dict) -> dict:
    """Images of the training split (after the validation split and train_limit) and of the test
    split, for costing jobs: exact where train_counts_per_class knows them, else estimated from
    the published total (None when neither is known, e.g. your own folders not visible here)."""
    spec = dataset_spec(dataset_cfg["name"])
    counts = train_counts_per_class(dataset_cfg)
    train = sum(counts) if counts is not None else None
    if train is None and spec.train_images is not None:
        train = int(round(spec.train_images * (1 - float(dataset_cfg.get("val_fraction", 0.1)))))
        if dataset_cfg.get("train_limit"):
            train = min(train, int(dataset_cfg["train_limit"]))
    return {"train": train, "test": spec.test_images}


def smallest_class(dataset_cfg: dict) -> tuple[int, str] | None:
    """The training images of the smallest class after the validation split, and those words
    for an error; None where the counts are unknown (train_counts_per_class)."""
    counts = train_counts_per_class(dataset_cfg)
    if not counts:
        return None
    smallest = min(counts)
    return smallest, (f"the {smallest} training images of the smallest class (label {counts.index(smallest)}) after "
                      f"the validation split (dataset.val_fraction={dataset_cfg.get('val_fraction', 0.1)})")


def check_dataset_counts(cfg: dict) -> tuple[int, str] | None:
    """Refuse, in one line, an IPC (config key distill.ipc) above the training images of the
    smallest class after the validation split, for every dataset whose counts are known; returns
    smallest_class (a method's own check compares its needs with it: RDED's candidates)."""
    smallest = smallest_class(cfg["dataset"])
    if smallest is None:
        return None
    for ipc in (int(i) for i in cfg["distill"]["ipc"]):
        if ipc > smallest[0]:
            raise TeddyError(f"distill.ipc {ipc} is above {smallest[1]}")
    return smallest
