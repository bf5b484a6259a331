"""The dataset registry (teddy.datasets): facts, one class-folder reader for every folder preset,
and the load-time count checks (IPC and RDED candidates against the smallest class)."""

import pytest
import torch
from fixtures import write_class_folders, write_image_folder
from PIL import Image
from torchvision import transforms

from teddy import image_folder
from teddy.config import check_config
from teddy.datasets import (DATASETS, check_dataset_counts, dataset_info, dataset_spec, image_counts, load_split,
                            smallest_class, train_counts_per_class)
from teddy.errors import TeddyError
from teddy.methods import METHODS
from teddy.methods.registry import RecipeContext


def test_every_dataset_states_its_facts_and_reader():
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet1k", "image_folder",
            "imagenette", "imagewoof"} <= set(DATASETS)
    for name, spec in DATASETS.items():
        assert spec.name == name and (callable(spec.reader) or (spec.reader is None and spec.folders))
        if spec.info is not None:
            assert spec.info.name == name and len(spec.info.mean) == len(spec.info.std) == spec.info.channels
            assert dataset_info(name) is spec.info
        if spec.train_per_class is not None:
            assert spec.info is not None and len(spec.train_per_class) == spec.info.num_classes
    facts = {n: (DATASETS[n].train_images, DATASETS[n].test_images)
             for n in ("mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet1k")}
    assert facts == {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000),
                     "cifar100": (50000, 10000), "tiny_imagenet": (100000, 10000),
                     "imagenet1k": (1281167, 50000)}
    assert DATASETS["fashion_mnist"].class_names[9] == "Ankle boot"
    with pytest.raises(TeddyError, match="unknown dataset 'mnist3d' .*dataset.name"):
        dataset_spec("mnist3d")
    with pytest.raises(TeddyError, match="takes its facts from its config section"):
        dataset_info("image_folder")


def test_one_class_folder_reader_for_every_folder_preset():
    folder_names = [n for n, s in DATASETS.items() if s.folders]
    assert {"tiny_imagenet", "imagenet1k", "image_folder", "imagenette"} <= set(folder_names)
    assert all(DATASETS[n].reader is None for n in folder_names)  # presets of the class-folder reader
    # fixed facts (Tiny-ImageNet, ImageNet-1K) need no normalisation rule; the others may
    assert not image_folder.is_folder_dataset({"name": "tiny_imagenet"})
    assert not image_folder.is_folder_dataset({"name": "imagenet1k"})
    assert image_folder.is_folder_dataset({"name": "imagewoof"}) and image_folder.is_folder_dataset(
        {"name": "image_folder"})
    assert not image_folder.is_folder_dataset({"name": "cifar10"})


def test_imagenet_preset_resizes_to_256_then_crops_224(tmp_path):
    root = write_image_folder(tmp_path / "in", per_class=1, size=300, words=False)
    test = load_split({"name": "imagenet1k", "root": str(root)}, "test")
    x, _ = test[0]
    path = test.base.samples[0][0]
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    assert torch.equal(x, tf(Image.open(path).convert("RGB")))
    assert test.class_names == sorted(p.name for p in (root / "val").iterdir())


def test_fixed_presets_ignore_reader_settings_in_the_config(tmp_path):
    root = write_image_folder(tmp_path / "tiny", per_class=2)
    cfg = {"name": "tiny_imagenet", "root": str(root), "image_size": 32, "val_fraction": 0.0}
    train = load_split(cfg, "train")
    assert train[0][0].shape == (3, 64, 64) and dataset_info(cfg).image_size == 64
    assert train.class_names == ["thing 0", "thing 1", "thing 2"]  # words.txt in the root


def test_tiny_imagenet_images_in_subfolders_are_read_and_counted(tmp_path):
    root = write_image_folder(tmp_path / "tiny", per_class=3)
    for wnid_dir in (root / "train").iterdir():  # the raw layout: train/<wnid>/images/*.JPEG
        (wnid_dir / "images").mkdir()
        for img in list(wnid_dir.glob("*.JPEG")):
            img.rename(wnid_dir / "images" / img.name)
    cfg = {"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.0}
    assert len(load_split(cfg, "train")) == 9
    assert train_counts_per_class(cfg) == [3, 3, 3]


def ipc_config(dataset, ipc, methods=None):
    return {"dataset": dataset, "distill": {"ipc": ipc, "methods": methods or {"random": {"method": "random"}}}}


def test_an_ipc_above_the_smallest_class_is_refused_in_one_line():
    fmnist = {"name": "fashion_mnist", "root": "/nowhere", "val_fraction": 0.1}
    assert train_counts_per_class(fmnist) == [5400] * 10  # fixed counts, stratified split: no files needed
    check_dataset_counts(ipc_config(fmnist, [1, 5400]))
    with pytest.raises(TeddyError) as err:
        check_dataset_counts(ipc_config(fmnist, [1, 7000]))
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("distill.ipc 7000 is above the 5400 training images of the smallest class")
    # unknown: train_limit on a dataset not stored class by class
    assert train_counts_per_class({**fmnist, "train_limit": 100}) is None


def test_the_config_loader_refuses_the_fashion_mnist_example(fmnist_root):
    cfg = {"dataset": {"name": "fashion_mnist", "root": str(fmnist_root), "val_fraction": 0.1},
           "base": {"arch": "convnet", "recipe": {"epochs": 1}},
           "distill": {"ipc": [1, 7000], "methods": {"random": {"method": "random"}}},
           "evaluate": {"students": ["convnet"], "protocols": ["teddy_small_kd"]}}
    with pytest.raises(TeddyError, match="distill.ipc 7000 is above the 5400 training images of the smallest class"):
        check_config(cfg)
    cfg["distill"]["ipc"] = [1, 10]
    check_config(cfg)


def test_folder_counts_are_what_the_reader_holds(tmp_path):
    root = write_image_folder(tmp_path / "tiny", per_class=12)
    for fraction, seed in ((0.1, 0), (0.25, 0), (0.25, 3), (0.0, 0)):
        cfg = {"name": "tiny_imagenet", "root": str(root), "val_fraction": fraction, "split_seed": seed}
        held = torch.bincount(load_split(cfg, "train").targets, minlength=3).tolist()
        assert train_counts_per_class(cfg) == held
        with pytest.raises(TeddyError, match=f"distill.ipc {min(held) + 1} is above .* {min(held)} training"):
            check_dataset_counts(ipc_config(cfg, [1, min(held) + 1]))
        check_dataset_counts(ipc_config(cfg, [min(held)]))
    # no tree here (a login node): Tiny-ImageNet's published 500 per class
    assert train_counts_per_class({"name": "tiny_imagenet", "root": str(tmp_path / "no")}) == [450] * 200
    # your own folders without the tree: unknown, the jobs check
    assert train_counts_per_class({"name": "image_folder", "root": str(tmp_path / "no")}) is None


def test_rded_candidates_against_the_smallest_class(tmp_path):
    root = write_class_folders(tmp_path / "d", ["a", "b", "c"], per_class=12, size=8)
    section = {"name": "image_folder", "root": str(root), "image_size": 8, "channels": 3, "val_fraction": 0.0}
    rded = {"method": "rded", "pool": "base"}  # the default candidates_per_class is 300
    smallest, where = smallest_class(section)

    def check(recipe, ipcs):  # RDED's own config check, as the config loader calls it
        ctx = RecipeContext("distill.methods.r", 8, tuple(ipcs), ["base"], smallest, where)
        METHODS["rded"].check(recipe, ctx)
    with pytest.raises(TeddyError, match="distill.methods.r.candidates_per_class=300 is above .* 12 training"):
        check(rded, [1])
    check({**rded, "candidates_per_class": 12, "factor": 2}, [3])
    with pytest.raises(TeddyError, match=r"distill.methods.r needs IPC x factor\^2 = 16 .* above"):
        check({**rded, "candidates_per_class": None, "factor": 2}, [4])


def test_image_counts_for_costing_jobs(tmp_path):
    assert image_counts({"name": "imagenet1k", "root": str(tmp_path / "no"), "val_fraction": 0.02}) == \
        {"train": 1255544, "test": 50000}
    assert image_counts({"name": "cifar10", "root": "/nowhere", "val_fraction": 0.1, "train_limit": 1000}) == \
        {"train": 1000, "test": 10000}
    root = write_image_folder(tmp_path / "tiny", per_class=12)
    assert image_counts({"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.0})["train"] == 36
    assert image_counts({"name": "image_folder", "root": str(tmp_path / "no")}) == {"train": None, "test": None}


def test_the_tiny_imagenet_example_is_predictable(tmp_path):
    """12 training images per class: the random split once left 9 in one class after the load
    check passed IPC 10. Stratified, every class keeps 12 - round(12 x val_fraction)."""
    root = write_image_folder(tmp_path / "tiny", per_class=12)
    for fraction, left in ((0.1, 11), (0.25, 9), (0.5, 6)):
        cfg = {"name": "tiny_imagenet", "root": str(root), "val_fraction": fraction}
        assert train_counts_per_class(cfg) == [left] * 3
        assert torch.bincount(load_split(cfg, "train").targets).tolist() == [left] * 3
        assert torch.bincount(load_split(cfg, "val").targets).tolist() == [12 - left] * 3
    check_dataset_counts(ipc_config({"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.1}, [10]))
    with pytest.raises(TeddyError) as err:
        check_dataset_counts(ipc_config({"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.25}, [1, 10]))
    assert str(err.value) == ("distill.ipc 10 is above the 9 training images of the smallest class (label 0) after "
                              "the validation split (dataset.val_fraction=0.25)")
