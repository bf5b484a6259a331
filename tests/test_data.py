import gzip

import pytest
import torch
from fixtures import write_cifar, write_fashion_mnist, write_image_folder

from teddy.augment import pixel_bounds
from teddy.data import batches, draw_indices, split_counts, split_indices
from teddy.datasets import dataset_info, load_split
from teddy.errors import TeddyError


def test_fashion_mnist_idx_gz_and_plain(tmp_path):
    for gz in (True, False):
        root = write_fashion_mnist(tmp_path / f"gz{gz}", n_train=50, n_test=20, gz=gz)
        cfg = {"name": "fashion_mnist", "root": str(root), "val_fraction": 0.2}
        train, val, test = (load_split(cfg, s) for s in ("train", "val", "test"))
        assert (len(train), len(val), len(test)) == (40, 10, 20)
        assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == torch.float32
        assert train.class_names[0] == "T-shirt/top"
        # normalised with the dataset's statistics: zero pixels map to -mean/std
        lo, _ = pixel_bounds(dataset_info("fashion_mnist"))
        assert train.images.min().item() == pytest.approx(lo.min().item(), abs=1e-5)


def test_truncated_idx_names_the_file(tmp_path):
    root = write_fashion_mnist(tmp_path / "f", n_train=30, n_test=10)
    path = root / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(TeddyError, match="truncated.*train-images"):
        load_split({"name": "fashion_mnist", "root": str(root)}, "train")


def test_missing_dataset_names_the_key(tmp_path):
    with pytest.raises(TeddyError, match="dataset.root"):
        load_split({"name": "fashion_mnist", "root": str(tmp_path / "nowhere")}, "test")
    with pytest.raises(TeddyError, match="unknown dataset 'mnist3d'"):
        load_split({"name": "mnist3d", "root": str(tmp_path)}, "test")


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickle_format(tmp_path, name, num_classes):
    root = write_cifar(tmp_path, num_classes=num_classes, n_per_batch=20 if num_classes == 10 else 200)
    train = load_split({"name": name, "root": str(root), "val_fraction": 0.0}, "train")
    test = load_split({"name": name, "root": str(root)}, "test")
    assert train.images.shape[1:] == (3, 32, 32)
    assert len(train) == (100 if num_classes == 10 else 200) and len(test) in (20, 200)
    assert len(train.class_names) == num_classes


def test_image_folder_tiny_imagenet(tmp_path):
    root = write_image_folder(tmp_path / "tiny")
    cfg = {"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.25}
    train, val, test = (load_split(cfg, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (9, 3, 12)
    x, y = train[0]
    assert x.shape == (3, 64, 64) and int(y) in (0, 1, 2)
    assert train.class_names == ["thing 0", "thing 1", "thing 2"]
    xb, yb = next(batches(train, 4, True, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert xb.shape == (4, 3, 64, 64) and yb.shape == (4,)


def test_split_is_seeded_and_disjoint():
    targets = torch.arange(100) % 4
    a_train, a_val = split_indices(targets, 0.1, seed=3)
    b_train, b_val = split_indices(targets, 0.1, seed=3)
    assert torch.equal(a_val, b_val) and len(a_val) == 12  # round(2.5) = 3 of each class's 25, halves up
    assert not set(a_train.tolist()) & set(a_val.tolist()) and len(a_train) + len(a_val) == 100
    assert not torch.equal(a_val, split_indices(targets, 0.1, seed=4)[1])


def test_split_holds_out_the_same_fraction_of_every_class():
    targets = torch.tensor([0] * 40 + [1] * 20 + [2] * 10)[torch.randperm(70, generator=torch.Generator().manual_seed(0))]
    train, val = split_indices(targets, 0.2, seed=0)
    assert torch.bincount(targets[val]).tolist() == [8, 4, 2]
    assert torch.bincount(targets[train]).tolist() == [32, 16, 8]
    assert split_counts([40, 20, 10], 0.2, seed=5) == [32, 16, 8]
    assert split_indices(targets, 0.0, seed=0)[1].numel() == 0


def test_reorganise_raw_tiny_imagenet_val(tmp_path):
    from teddy.data import reorganise_tiny_imagenet_val

    root = write_image_folder(tmp_path / "tiny", per_class=2)
    # turn val/ back into the raw layout: val/images/*.JPEG + val_annotations.txt
    val = root / "val"
    (val / "images").mkdir()
    lines = []
    for wnid_dir in sorted(p for p in val.iterdir() if p.name.startswith("n")):
        for img in sorted(wnid_dir.iterdir()):
            img.rename(val / "images" / img.name)
            lines.append(f"{img.name}\t{wnid_dir.name}\t0\t0\t63\t63")
        wnid_dir.rmdir()
    (val / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    assert reorganise_tiny_imagenet_val(root) == 6
    test = load_split({"name": "tiny_imagenet", "root": str(root)}, "test")
    assert len(test) == 6 and sorted(set(test.targets.tolist())) == [0, 1, 2]
    with pytest.raises(TeddyError, match="val_annotations"):
        reorganise_tiny_imagenet_val(tmp_path / "nothing")


def test_draw_indices_draws_distinct_members_reproducibly_and_all_when_short():
    idx = torch.arange(100, 120)
    drawn = draw_indices(idx, 5, torch.Generator().manual_seed(1))
    assert len(drawn) == 5 and len(set(drawn.tolist())) == 5 and set(drawn.tolist()) <= set(idx.tolist())
    assert torch.equal(drawn, draw_indices(idx, 5, torch.Generator().manual_seed(1)))
    assert not torch.equal(drawn, draw_indices(idx, 5, torch.Generator().manual_seed(2)))
    assert sorted(draw_indices(idx, 50, torch.Generator().manual_seed(1)).tolist()) == idx.tolist()
