"""The distilled set on disk: PNG ImageFolder + meta.json (teddy.distilled_set)."""

import json

import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from fixtures import write_png_set
from teddy.distilled_set import (check_set, index_within_class, load_set_tensors, quantise, read_set, to_uint8,
                                 write_meta)
from teddy.errors import TeddyError

MEAN3, STD3 = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _rgb_set(n_classes=3, ipc=2, size=9):
    torch.manual_seed(0)
    labels = torch.arange(n_classes).repeat_interleave(ipc)
    return torch.randn(n_classes * ipc, 3, size, size), labels


@pytest.mark.parametrize("channels", [1, 3])
def test_png_set_round_trips_to_the_quantised_tensors(tmp_path, channels):
    images, labels = _rgb_set()
    images = images[:, :channels]
    mean, std = MEAN3[:channels], STD3[:channels]
    meta_path = write_png_set(tmp_path / "set", images, labels, mean, std, ["a", "b", "c"], ipc=2)
    back, back_labels, meta = load_set_tensors(meta_path)
    assert torch.equal(back_labels, labels)
    assert torch.allclose(back, quantise(images, mean, std), atol=1e-6)
    # quantisation is the only change: at most half a grey level of the valid pixel
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    assert ((back * s + m) - (images * s + m).clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert meta["counts"] == [2, 2, 2] and meta["class_names"] == ["a", "b", "c"] and meta["channels"] == channels
    # the lazily read dataset gives the same tensors
    _, dataset = read_set(tmp_path / "set")
    assert torch.allclose(torch.stack([dataset[i][0] for i in range(len(dataset))]), back)


def test_torchvision_image_folder_reads_it_with_class_indices_in_order(tmp_path):
    images, labels = _rgb_set(n_classes=12, ipc=1)
    write_png_set(tmp_path / "set", images, labels, MEAN3, STD3, [f"c{i}" for i in range(12)], ipc=1)
    folder = ImageFolder(str(tmp_path / "set" / "images"))
    assert [folder.class_to_idx[f"{c:04d}"] for c in range(12)] == list(range(12))
    assert sorted(t for _, t in folder.samples) == labels.tolist()
    pixels = torch.from_numpy(np.array(folder[5][0])).permute(2, 0, 1)
    assert torch.equal(pixels.to(torch.uint8), to_uint8(images[5:6], MEAN3, STD3)[0])


def test_set_hash_identifies_the_images(tmp_path):
    images, labels = _rgb_set()
    a = json.loads(write_png_set(tmp_path / "a", images, labels, MEAN3, STD3, list("abc"), ipc=2).read_text())
    b = json.loads(write_png_set(tmp_path / "b", images, labels, MEAN3, STD3, list("abc"), ipc=2).read_text())
    images[0] += 1
    c = json.loads(write_png_set(tmp_path / "c", images, labels, MEAN3, STD3, list("abc"), ipc=2).read_text())
    assert a["set_hash"] == b["set_hash"] != c["set_hash"]


def test_index_within_class():
    assert index_within_class(torch.tensor([2, 0, 2, 2, 0])) == [0, 0, 1, 2, 1]


def test_bad_trees_are_one_line_each(tmp_path):
    images, labels = _rgb_set()
    meta = write_png_set(tmp_path / "set", images, labels, MEAN3, STD3, list("abc"), ipc=2)
    # an unreadable image
    (tmp_path / "set/images/0001/00000.png").write_bytes(b"not a png")
    with pytest.raises(TeddyError, match=r"unreadable image .*0001/00000.png"):
        load_set_tensors(meta)
    # a class folder missing
    for p in (tmp_path / "set/images/0002").iterdir():
        p.unlink()
    (tmp_path / "set/images/0002").rmdir()
    with pytest.raises(TeddyError, match="class folder 0002 is missing"):
        check_set(meta)
    # meta.json refuses a tree whose classes do not hold IPC images each
    with pytest.raises(TeddyError, match="other than IPC 2"):
        write_meta(tmp_path / "set", method="m", ipc=2, class_names=list("abc"), mean=MEAN3, std=STD3, channels=3,
                   image_size=9, config={})
    with pytest.raises(TeddyError, match="file not found"):
        check_set(tmp_path / "nowhere")
