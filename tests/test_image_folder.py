"""Class-folder datasets (image_folder, the ImageNet subsets), MNIST, and their config checks."""

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import class_patterns, write_class_folders, write_idx
from PIL import Image

from teddy.config import check_config
from teddy.datasets import dataset_info, load_split
from teddy.errors import TeddyError
from teddy.image_folder import check_tree, class_folders, compute_normalisation
from teddy.imagenet_subsets import SUBSETS, subset_wnids

WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079"]


def folder_cfg(root, **extra):
    return {"name": "image_folder", "root": str(root), "image_size": 20, "channels": 3, **extra}


def test_normalisation_matches_a_hand_computation(tmp_path):
    root = write_class_folders(tmp_path / "d", ["a", "b", "c"], per_class=3, size=20)
    stats = compute_normalisation(folder_cfg(root))
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255
                       for p in sorted((root / "train").rglob("*.png"))])  # N x H x W x C
    assert stats["mean"] == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-6)  # ToTensor divides in float32
    assert stats["std"] == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-6)  # ToTensor divides in float32
    assert stats["train_counts"] == {"a": 3, "b": 3, "c": 3} and stats["skipped"] == []


def test_dataset_info_and_splits_follow_the_config(tmp_path):
    root = write_class_folders(tmp_path / "d", ["cat", "dog"], per_class=4, size=24, test_split="test")
    norm = tmp_path / "normalisation.json"
    cfg = folder_cfg(root, image_size=20, normalisation_file=str(norm), val_fraction=0.25)
    norm.write_text(json.dumps(compute_normalisation(cfg)))
    info = dataset_info(cfg)
    assert (info.num_classes, info.channels, info.image_size) == (2, 3, 20)
    assert info.mean == tuple(json.loads(norm.read_text())["mean"])
    train, val, test = (load_split(cfg, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (6, 2, 4)
    x, y = train[0]
    assert x.shape == (3, 20, 20) and train.class_names == ["cat", "dog"]  # resized from 24
    # the configured mean/std win over the computed ones
    assert dataset_info({**cfg, "mean": [0.5] * 3, "std": [0.25] * 3}).std == (0.25,) * 3


def test_greyscale_tree_and_mixed_modes_are_converted(tmp_path, capsys):
    root = write_class_folders(tmp_path / "d", ["0", "1", "2"], per_class=3, size=20, channels=1)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(root / "train" / "1" / "colour.png")
    Image.new("RGBA", (20, 20)).save(root / "val" / "2" / "alpha.png")
    cfg = folder_cfg(root, channels=1, mean=[0.5], std=[0.5])
    stats = compute_normalisation(cfg)
    assert stats["converted"] == {"RGB": 1, "RGBA": 1} and stats["train_counts"]["1"] == 4
    assert "converted 2 image(s) to L" in capsys.readouterr().err
    train = load_split({**cfg, "val_fraction": 0.0}, "train")
    assert len(train) == 10 and train[0][0].shape == (1, 20, 20)


def test_subset_selection_by_wnid_list(tmp_path):
    root = write_class_folders(tmp_path / "imagenet", WNIDS, per_class=2, size=20)
    cfg = folder_cfg(root, classes=[WNIDS[3], WNIDS[1]], mean=[0.5] * 3, std=[0.5] * 3, val_fraction=0.0)
    assert dataset_info(cfg).num_classes == 2
    train = load_split(cfg, "train")
    assert len(train) == 4 and sorted(train.targets.tolist()) == [0, 0, 1, 1]
    # labels follow the list's order, not the sorted folder order
    label_of = {Path(path).parent.name: label for path, label in train.base.samples}
    assert label_of == {WNIDS[3]: 0, WNIDS[1]: 1}
    with pytest.raises(TeddyError, match=r"\['n09999999'\] missing from .*train"):
        check_tree({**cfg, "classes": [WNIDS[0], "n09999999"]})


def test_presets_are_ten_distinct_wnids_in_imagenet_index_order():
    assert set(SUBSETS) == {"imagenette", "imagewoof", "imagefruit", "imageyellow", "imagemeow", "imagesquawk"}
    index_to_wnid = {}
    for name, entries in SUBSETS.items():
        assert len(entries) == 10 and len(set(subset_wnids(name))) == 10
        for index, wnid, _ in entries:
            assert index_to_wnid.setdefault(index, wnid) == wnid  # a shared class has one wnid
    # ImageNet-1K's class index is the sorted order of its wnids: the two orders must agree
    by_index = [index_to_wnid[i] for i in sorted(index_to_wnid)]
    assert by_index == sorted(by_index)


def test_preset_reads_its_classes_from_an_imagenet_tree(tmp_path):
    wnids = subset_wnids("imagewoof")
    root = write_class_folders(tmp_path / "imagenet", wnids + ["n01440764"], per_class=2, size=40,
                               per_class_test=1)
    cfg = {"name": "imagewoof", "root": str(root), "image_size": 32, "val_fraction": 0.0}
    info = dataset_info(cfg)
    assert (info.num_classes, info.image_size, info.channels) == (10, 32, 3)
    train = load_split(cfg, "train")
    assert len(train) == 20 and train.class_names[2] == "Samoyed" and train[0][0].shape == (3, 32, 32)


def test_bad_trees_are_one_clear_line(tmp_path):
    root = write_class_folders(tmp_path / "d", ["a", "b"], per_class=3, size=20)
    with pytest.raises(TeddyError, match="class 'a' has 3 training images, fewer than the IPC 5"):
        check_tree(folder_cfg(root), min_per_class=5)
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    with pytest.raises(TeddyError, match="empty class folder .*train/c"):
        check_tree(folder_cfg(root))
    with pytest.raises(TeddyError, match="dataset folder missing"):
        class_folders(folder_cfg(tmp_path / "nowhere"))


def test_a_file_that_is_not_an_image_fails_or_is_skipped(tmp_path):
    root = write_class_folders(tmp_path / "d", ["a", "b"], per_class=3, size=20)
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"this is not a png")
    notes = root / "train" / "a" / "notes.txt"
    notes.write_text("not an image, not read")
    with pytest.raises(TeddyError, match="not a readable image: .*broken.png"):
        compute_normalisation(folder_cfg(root))
    norm = tmp_path / "n.json"
    cfg = folder_cfg(root, bad_images="skip", normalisation_file=str(norm), val_fraction=0.0)
    stats = compute_normalisation(cfg)
    assert stats["skipped"] == [str(bad)] and stats["train_counts"] == {"a": 3, "b": 3}
    assert stats["ignored"] == [str(notes)]
    norm.write_text(json.dumps(stats))
    train = load_split(cfg, "train")
    assert len(train) == 6 and all(train[i][0].shape == (3, 20, 20) for i in range(6))
    # without the list the loader names the file when it meets it
    unlisted = load_split(folder_cfg(root, mean=[0.5] * 3, std=[0.5] * 3, val_fraction=0.0), "train")
    with pytest.raises(TeddyError, match="broken.png"):
        [unlisted[i] for i in range(len(unlisted))]


def test_mnist_from_idx_files(tmp_path):
    for prefix, n in (("train", 40), ("t10k", 10)):
        images, labels = class_patterns(n, 10, 28, 1)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images[:, 0])
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    cfg = {"name": "mnist", "root": str(tmp_path), "val_fraction": 0.0}
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert (len(train), len(test)) == (40, 10) and train.class_names[3] == "3"
    assert dataset_info("mnist").mean == (0.1307,)


def base_config(dataset):
    return {"dataset": dataset, "base": {"arch": "convnet", "recipe": {"epochs": 1}},
            "distill": {"ipc": [1], "methods": {"random": {"method": "random"}}},
            "evaluate": {"students": ["convnet"], "protocols": ["teddy_small_kd"]}, "arch_options": {"convnet": {"depth": 3}}}


def test_config_load_checks(tmp_path):
    root = write_class_folders(tmp_path / "d", ["a", "b"], per_class=3, size=20)
    check_config(base_config(folder_cfg(root)))
    too_small = base_config(folder_cfg(root, image_size=6))
    with pytest.raises(TeddyError, match="'convnet' .*needs images of at least 8x8 pixels.*image_size is 6"):
        check_config(too_small)
    with pytest.raises(TeddyError, match="dataset.channels is required"):
        check_config(base_config({"name": "image_folder", "root": str(root), "image_size": 20}))
    with pytest.raises(TeddyError, match="dataset.mean has 1 values but dataset.channels is 3"):
        check_config(base_config(folder_cfg(root, mean=[0.5], std=[0.5])))
    ipc = base_config(folder_cfg(root))
    ipc["distill"]["ipc"] = [1, 4]
    with pytest.raises(TeddyError, match="fewer than the IPC 4"):
        check_config(ipc)
    # no tree on this machine (e.g. a login node): the jobs check it when they run
    check_config(base_config(folder_cfg(tmp_path / "elsewhere")))


def test_16_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    root = write_class_folders(tmp_path / "d", ["a", "b"], per_class=2, size=4, channels=1)
    wide = np.full((4, 4), 32896, dtype=np.uint16)  # 32896 / 65535 = 128 / 255
    wide[0, 0] = 65535
    Image.fromarray(wide).save(root / "train" / "a" / "wide.png")
    cfg = folder_cfg(root, image_size=4, channels=1, mean=[0.0], std=[1.0], val_fraction=0.0)
    stats = compute_normalisation(cfg)
    assert stats["converted"] in ({"I;16": 1}, {"I": 1})
    train = load_split(cfg, "train")
    x = next(train[i][0] for i in range(len(train)) if "wide" in train.base.samples[int(train.indices[i])][0])
    assert x[0, 0, 0].item() == pytest.approx(1.0) and x[0, 1, 1].item() == pytest.approx(128 / 255)


def test_the_test_split_is_test_and_val_only_when_there_is_no_test(tmp_path):
    """One name per split: test/ is the split the tables report; a tree that calls it val/
    (ImageNet-1K, Tiny-ImageNet) is read the same way, and test/ wins when both are there."""
    root = write_class_folders(tmp_path / "d", ["a", "b"], per_class=3, size=20, test_split="val",
                               per_class_test=1)
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert len(load_split(folder_cfg(root, **stats), "test")) == 2  # val/ read as the test split
    write_class_folders(root, ["a", "b"], per_class=3, size=20, test_split="test", per_class_test=2)
    assert len(load_split(folder_cfg(root, **stats), "test")) == 4  # test/ preferred over val/
    # the validation split is held out of train/, whatever val/ holds
    assert len(load_split(folder_cfg(root, val_fraction=1 / 3, **stats), "val")) == 2
