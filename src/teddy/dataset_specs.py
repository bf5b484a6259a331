"""The dataset registry: per dataset name its facts and its reader (`register_dataset`).

IDX files and CIFAR pickles are read by teddy.data; a spec with a `preset` and no reader is a
preset of the class-folder reader (teddy.image_folder), which reads its settings here. The
facts, splits and counts built on these specs are teddy.datasets'. A new dataset is one
`register_dataset` call."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from teddy import data
from teddy.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from teddy.imagenet_subsets import IMAGE_SIZE, MEAN, RESIZE, STD, SUBSETS, subset_names, subset_wnids
from teddy.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset. `reader(dataset_cfg, train, info)` returns the whole train or test
    split; `info` holds the fixed facts (None: from the config and the class folders);
    `train_per_class`/`test_per_class` are the images per class of the published dataset, before
    the validation split (None where they vary or are the user's); `preset` holds the settings of
    the class-folder reader (None for the other readers); `download` is the torchvision class
    that `dataset.download: true` fetches with, `download_subdir` where its files land under root."""

    name: str
    reader: Callable | None  # None: the class-folder reader (teddy.image_folder), with `preset`
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


DATASETS = Registry("dataset", "dataset.name")


def register_dataset(name: str, reader: Callable | None, **facts) -> DatasetSpec:
    train, test = facts.get("train_per_class"), facts.get("test_per_class")
    facts.setdefault("train_images", sum(train) if train else None)
    facts.setdefault("test_images", sum(test) if test else None)
    return DATASETS.register(name, DatasetSpec(name, reader, **facts))


def dataset_spec(name: str) -> DatasetSpec:
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
    "tiny_imagenet", None,
    info=DatasetInfo("tiny_imagenet", 200, 3, 64, IMAGENET_MEAN, IMAGENET_STD),
    train_per_class=(500,) * 200, test_per_class=(50,) * 200,
    preset={"image_size": 64, "channels": 3, "resize": "stretch", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "words_file": "words.txt"})
register_dataset(
    "imagenet1k", None,
    info=DatasetInfo("imagenet1k", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD),
    train_images=1281167, test_per_class=(50,) * 1000,  # 732 to 1300 training images per class
    preset={"image_size": 224, "channels": 3, "resize": "center_crop", "short_side": 256,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "words_file": "words.txt"})
# your own class folders: image_size and channels from the config, mean/std from it or rule normalisation
register_dataset("image_folder", None, preset={"resize": "stretch"})
# MTT's ten-class ImageNet subsets (teddy.imagenet_subsets): defaults the config may change
for _name in SUBSETS:
    register_dataset(
        _name, None,
        preset={"image_size": IMAGE_SIZE, "channels": 3, "resize": RESIZE, "mean": list(MEAN), "std": list(STD),
                "classes": subset_wnids(_name), "class_names": subset_names(_name)})
