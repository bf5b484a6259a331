"""The dataset registry: per dataset name its facts and its reader, in one place.

    dataset_spec("cifar10")            -> DatasetSpec (reader, facts, image counts)
    dataset_info(cfg["dataset"])       -> DatasetInfo (classes, channels, image size, mean, std)
    load_split(cfg["dataset"], split)  -> the train / val / train_full / test split
    train_counts_per_class(cfg["dataset"]) -> training images per class after the validation split
    check_dataset_counts(cfg)          -> refuses an IPC (or RDED's candidates) above the smallest class

Readers: IDX files and CIFAR pickles (teddy.data, read whole into memory) and class folders
(teddy.image_folder, read lazily). Tiny-ImageNet and ImageNet-1K are presets of the class-folder
reader with fixed facts; `image_folder` and the ImageNet subsets take theirs from the config,
the tree and rule normalisation (`info` is None). A new dataset is one `register_dataset` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from teddy import data, image_folder
from teddy.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, split_counts, split_indices
from teddy.errors import TeddyError
from teddy.imagenet_subsets import IMAGE_SIZE, MEAN, RESIZE, STD, SUBSETS, subset_names, subset_wnids


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset. `reader(dataset_cfg, train, info)` returns the whole train or test
    split; `info` holds the fixed facts (None: from the config and the class folders);
    `train_per_class`/`test_per_class` are the images per class of the published dataset, before
    the validation split (None where they vary or are the user's); `preset` holds the settings of
    the class-folder reader (None for the other readers); `download` is the torchvision class
    that `dataset.download: true` fetches with, `download_subdir` where its files land under root."""

    name: str
    reader: Callable
    info: DatasetInfo | None = None
    class_names: tuple | None = None
    train_per_class: tuple | None = None
    test_per_class: tuple | None = None
    train_images: int | None = None
    test_images: int | None = None
    preset: dict | None = None
    download: str | None = None
    download_subdir: str | None = None

    @property
    def folders(self) -> bool:
        """Read from class folders (counted when the tree is visible)."""
        return self.preset is not None


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, reader: Callable, **facts) -> DatasetSpec:
    train, test = facts.get("train_per_class"), facts.get("test_per_class")
    facts.setdefault("train_images", sum(train) if train else None)
    facts.setdefault("test_images", sum(test) if test else None)
    spec = DatasetSpec(name, reader, **facts)
    DATASETS[name] = spec
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise TeddyError(f"unknown dataset '{name}' (config key dataset.name); known: {sorted(DATASETS)}")
    return DATASETS[name]


# --- the datasets ------------------------------------------------------------------------

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

register_dataset(
    "mnist", partial(data.read_idx_dataset, class_names=MNIST_CLASSES),
    info=DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,)), class_names=MNIST_CLASSES,
    train_per_class=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    test_per_class=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    download="MNIST", download_subdir="MNIST/raw")
register_dataset(
    "fashion_mnist", partial(data.read_idx_dataset, class_names=FASHION_MNIST_CLASSES),
    info=DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,)), class_names=FASHION_MNIST_CLASSES,
    train_per_class=(6000,) * 10, test_per_class=(1000,) * 10, download="FashionMNIST",
    download_subdir="FashionMNIST/raw")
register_dataset(
    "cifar10", partial(data.read_cifar, folder="cifar-10-batches-py",
                       train_files=[f"data_batch_{i}" for i in range(1, 6)], test_files=["test_batch"],
                       meta="batches.meta", names_key="label_names", labels_key="labels"),
    info=DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    train_per_class=(5000,) * 10, test_per_class=(1000,) * 10, download="CIFAR10")
register_dataset(
    "cifar100", partial(data.read_cifar, folder="cifar-100-python", train_files=["train"], test_files=["test"],
                        meta="meta", names_key="fine_label_names", labels_key="fine_labels"),
    info=DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    train_per_class=(500,) * 100, test_per_class=(100,) * 100, download="CIFAR100")

# class folders: Tiny-ImageNet (val/ reorganised into class folders once, tools/
# reorganise_tiny_imagenet_val.py; names from words.txt) and ImageNet-1K (resize 256, centre 224)
register_dataset(
    "tiny_imagenet", image_folder.read_class_folders,
    info=DatasetInfo("tiny_imagenet", 200, 3, 64, IMAGENET_MEAN, IMAGENET_STD),
    train_per_class=(500,) * 200, test_per_class=(50,) * 200,
    preset={"image_size": 64, "channels": 3, "resize": "stretch", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "words_file": "words.txt"})
register_dataset(
    "imagenet1k", image_folder.read_class_folders,
    info=DatasetInfo("imagenet1k", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD),
    train_images=1281167, test_per_class=(50,) * 1000,  # 732 to 1300 training images per class
    preset={"image_size": 224, "channels": 3, "resize": "center_crop", "short_side": 256,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "words_file": "words.txt"})
# your own class folders: image_size and channels from the config, mean/std from it or rule normalisation
register_dataset("image_folder", image_folder.read_class_folders, preset={"resize": "stretch"})
# MTT's ten-class ImageNet subsets (teddy.imagenet_subsets): defaults the config may change
for _name in SUBSETS:
    register_dataset(
        _name, image_folder.read_class_folders,
        preset={"image_size": IMAGE_SIZE, "channels": 3, "resize": RESIZE, "mean": list(MEAN), "std": list(STD),
                "classes": subset_wnids(_name), "class_names": subset_names(_name)})


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
    if split == "test":
        return spec.reader(dataset_cfg, False, info)
    if split not in ("train", "val", "train_full"):
        raise ValueError(f"unknown split {split}")
    full = spec.reader(dataset_cfg, True, info)
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


def check_dataset_counts(cfg: dict) -> None:
    """Refuse, in one line, an IPC (config key distill.ipc) or an RDED recipe's
    candidates_per_class / IPC x factor^2 above the training images of the smallest class after
    the validation split, for every dataset whose counts are known (train_counts_per_class)."""
    dataset = cfg["dataset"]
    counts = train_counts_per_class(dataset)
    if not counts:
        return
    smallest = min(counts)
    where = (f"the {smallest} training images of the smallest class (label {counts.index(smallest)}) after "
             f"the validation split (dataset.val_fraction={dataset.get('val_fraction', 0.1)})")
    ipcs = [int(i) for i in cfg["distill"]["ipc"]]
    for ipc in ipcs:
        if ipc > smallest:
            raise TeddyError(f"distill.ipc {ipc} is above {where}")
    from teddy.methods import full_recipe

    for name, recipe in cfg["distill"]["methods"].items():
        if recipe.get("method") != "rded":
            continue
        full = full_recipe(recipe)
        cap, factor = full.get("candidates_per_class"), int(full.get("factor", 1))
        if cap is not None and int(cap) > smallest:
            raise TeddyError(f"distill.methods.{name}.candidates_per_class={cap} is above {where}")
        needed = max(ipcs) * factor ** 2
        if needed > smallest:
            raise TeddyError(f"distill.methods.{name} needs IPC x factor^2 = {needed} distinct images per class, "
                             f"above {where}")
