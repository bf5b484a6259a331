"""Shards and gather (teddy.shard_store via teddy.stages): the set does not depend on the number
of shards, the PNGs read back equal the quantised in-memory result, and a missing, duplicated or
out-of-range shard is one clear line; the sample grid names each row's class."""

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_fashion_mnist
from PIL import Image, ImageDraw

from teddy.datasets import dataset_info, load_split
from teddy.distilled_set import check_set, load_set_tensors, quantise, write_images
from teddy.errors import TeddyError
from teddy.io import load_json
from teddy.job_files import Files
from teddy.jobs import eval_cell, eval_result_path, shard_count
from teddy.methods import DistillTask, get_method
from teddy.models import build_model
from teddy.pool import load_pool, save_model
from teddy.shard_store import sample_grid
from teddy.stages import run_stage
from teddy.train import recalibrate_bn

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    data = write_fashion_mnist(root / "data", n_train=100, n_test=10)
    section = {"name": "fashion_mnist", "root": str(data), "val_fraction": 0.0}
    real = load_split(section, "train")
    members = []
    for i in range(2):
        torch.manual_seed(i)
        model = build_model("convnet", 10, 1, 28, depth=2, width=8)
        recalibrate_bn(model, real, CPU, batches_to_use=2, batch_size=50)
        save_model(root / f"member{i}.pt", model, {"member": i})
        members.append(str(root / f"member{i}.pt"))
    return root, section, members


def config(section, batches_per_shard=None, method="teddy"):
    recipes = {"teddy": {"method": "teddy", "pool": "prior", "iterations": 3, "batch_size": 10, "lr": 0.05,
                         "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2}},
               "herding": {"method": "herding", "pool": "prior"}}
    return {"dataset": section, "device": "cpu", "base": {"arch": "convnet"}, "pools": {"prior": {"generator": "prior"}},
            "distill": {"seed": 0, "batches_per_shard": batches_per_shard, "methods": {method: recipes[method]}}}


def distill(cfg, method, ipc, shard, members, shard_dir):
    run_stage("distill", cfg, {"method": method, "ipc": ipc, "shard": shard}, Files(pool=members),
              Files(done=Path(shard_dir) / "done.json"))


def gather_set(cfg, method, ipc, shard_dirs, set_dir):
    run_stage("gather", cfg, {"method": method, "ipc": ipc}, Files(shards=[Path(d) / "done.json" for d in shard_dirs]),
              Files(meta=set_dir / "meta.json", grid=set_dir / "grid.png", log_json=set_dir / "log.json"))


def run_all(cfg, members, set_dir: Path, ipc: int, method="teddy") -> dict:
    shard_dirs = []
    for k in range(shard_count(cfg, method, ipc)):
        shard_dirs.append(set_dir / "shards" / str(k))
        distill(cfg, method, ipc, k, members, shard_dirs[-1])
    gather_set(cfg, method, ipc, shard_dirs, set_dir)
    return load_json(set_dir / "meta.json")


def test_one_shard_and_four_shards_give_the_same_set(setup, tmp_path):
    root, section, members = setup
    one = run_all(config(section), members, tmp_path / "one", ipc=4)           # 4 batches of 10, one job
    four = run_all(config(section, 1), members, tmp_path / "four", ipc=4)      # one batch per job
    assert one["batches"] == four["batches"] == 4 and (one["shards"], four["shards"]) == (1, 4)
    assert one["set_hash"] == four["set_hash"] and one["counts"] == [4] * 10
    a, b = load_set_tensors(tmp_path / "one"), load_set_tensors(tmp_path / "four")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    log = load_json(tmp_path / "four" / "log.json")
    assert [s["batches"] for s in log["shards"]] == [[0], [1], [2], [3]] and len(log["batches"]) == 4
    assert (tmp_path / "four" / "grid.png").read_bytes()[:4] == b"\x89PNG"
    # the gather links, it does not copy: the set's file is the shard's file
    shard_png = tmp_path / "four" / "shards" / "2" / "images" / "0003" / "00002.png"
    assert (tmp_path / "four" / "images" / "0003" / "00002.png").samefile(shard_png)


def test_pngs_read_back_equal_the_quantised_in_memory_set(setup, tmp_path):
    root, section, members = setup
    cfg = config(section)
    run_all(cfg, members, tmp_path / "set", ipc=2)
    task = DistillTask(load_split(section, "train"), dataset_info(section), load_pool(members), 2,
                       cfg["distill"]["methods"]["teddy"], seed=0, name="teddy")
    memory = get_method("teddy")(task)
    images, labels, meta = load_set_tensors(tmp_path / "set")
    order = torch.argsort(memory.labels * 100 + memory.index_in_class)  # the tree's class, then index order
    assert torch.equal(labels, memory.labels[order])
    assert torch.allclose(images, quantise(memory.images[order], meta["mean"], meta["std"]), atol=1e-6)


def test_set_level_method_is_one_shard(setup, tmp_path):
    root, section, members = setup
    cfg = config(section, 1, method="herding")
    assert shard_count(cfg, "herding", 3) == 1
    meta = run_all(cfg, members[:1], tmp_path / "herding", ipc=3, method="herding")
    assert meta["counts"] == [3] * 10


def test_missing_duplicated_or_out_of_range_shards_are_one_line(setup, tmp_path):
    root, section, members = setup
    cfg = config(section, 1)
    set_dir = tmp_path / "set"
    with pytest.raises(TeddyError, match="shard 2 is beyond the set: teddy at IPC 2 has 2 shard"):
        distill(cfg, "teddy", 2, 2, members, set_dir / "shards" / "2")
    for k in range(2):
        distill(cfg, "teddy", 2, k, members, set_dir / "shards" / str(k))
    gather = lambda dirs: gather_set(cfg, "teddy", 2, dirs, set_dir)  # noqa
    with pytest.raises(TeddyError, match=r"batches \[1\] of 2 are in no shard"):
        gather([set_dir / "shards" / "0"])
    with pytest.raises(TeddyError, match="shard 0 given twice"):
        gather([set_dir / "shards" / "0", set_dir / "shards" / "0", set_dir / "shards" / "1"])
    assert not (set_dir / "meta.json").exists() and not (set_dir / "images").exists()
    (set_dir / "shards" / "1" / "images" / "0004" / "00001.png").unlink()
    with pytest.raises(TeddyError, match="0004/00001.png listed in done.json is missing"):
        gather([set_dir / "shards" / "0", set_dir / "shards" / "1"])
    distill(cfg, "teddy", 2, 1, members, set_dir / "shards" / "1")  # not skipped: its done.json
    gather([set_dir / "shards" / "0", set_dir / "shards" / "1"])
    check_set(set_dir)
    for png in (set_dir / "images" / "0007").iterdir():
        png.unlink()
    (set_dir / "images" / "0007").rmdir()
    with pytest.raises(TeddyError, match="class folder 0007 is missing"):
        check_set(set_dir)


def ink(gray: np.ndarray) -> np.ndarray:
    """The dark pixels of a grayscale strip, cropped to their bounding box."""
    ys, xs = np.nonzero(gray < 128)
    assert len(ys), "no text drawn"
    return gray[ys.min():ys.max() + 1, xs.min():xs.max() + 1] < 128


def test_sample_grid_writes_each_class_index_and_name_left_of_its_row(tmp_path):
    names, ipc, size = ["T-shirt/top", "Trouser", "Pullover"], 2, 28
    labels = torch.arange(len(names)).repeat_interleave(ipc)
    # black images, so the white strip left of them holds only the names
    write_images(tmp_path / "images", torch.zeros(len(labels), 1, size, size), labels,
                 [j for _ in names for j in range(ipc)], mean=[0.0], std=[1.0])
    sample_grid(tmp_path / "images", names, ipc, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"))
    first_image_column = int(np.nonzero((grid[:size] == 0).all(axis=0))[0][0])
    assert grid.shape[0] == len(names) * (size + 2)
    for c, name in enumerate(names):
        strip = grid[c * (size + 2):c * (size + 2) + size, :first_image_column]
        expected = Image.new("L", (200, size), 255)
        ImageDraw.Draw(expected).text((0, 0), f"{c}: {name}", fill=0)
        assert np.array_equal(ink(strip), ink(np.asarray(expected))), f"row {c} does not read '{c}: {name}'"


def test_eval_cell_is_the_relative_path_its_result_log_and_benchmark_share():
    assert eval_cell("herding_ipc50", 50, "convnet", "dc", 2) == "herding_ipc50/ipc50/convnet/dc/seed2"
    assert eval_result_path("R", "m", 1, "a", "p", 0) == f"R/eval/{eval_cell('m', 1, 'a', 'p', 0)}.json"


def test_eval_result_path_is_the_rules_pattern_and_its_filled_path():
    # the evaluate rule's output is this function called with wildcard strings
    assert eval_result_path("R", "{method}", "{ipc}", "{arch}", "{protocol}", "{seed}") == \
        "R/eval/{method}/ipc{ipc}/{arch}/{protocol}/seed{seed}.json"
    assert eval_result_path(Path("res"), "herding_ipc50", 50, "convnet", "dc", 2) == \
        "res/eval/herding_ipc50/ipc50/convnet/dc/seed2.json"
