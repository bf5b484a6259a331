"""A method entry `import` runs a set made elsewhere (an ImageFolder of PNGs) through the same
distilled-set format, students and label protocols as ours."""

import json
import shutil

import numpy as np
import pytest
from fixtures import set_protocol, tiny_config
from PIL import Image

from teddy.errors import TeddyError
from teddy.job_files import Files
from teddy.stages import run_stage

pytestmark = pytest.mark.usefixtures("one_thread")


def write_peer_set(root, per_class=2, size=32):
    rng = np.random.default_rng(0)
    for c in range(10):
        d = root / f"class_{c:02d}"  # any names: sorted order is the class index
        d.mkdir(parents=True)
        for j in range(per_class + 1):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), mode="L").save(d / f"img{j}.png")
    return root


def _cfg(tmp_path, fmnist_root, peer):
    cfg = tiny_config(fmnist_root)
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["distill"]["methods"] = {"peer": {"method": "import", "path": str(peer)}}
    cfg["evaluate"]["protocols"] = ["teddy_small_hard"]
    set_protocol(cfg, epochs=2)
    return cfg


def _distill(cfg, tmp_path, ipc=2):
    set_dir = tmp_path / "results/distilled/peer" / f"ipc{ipc}"
    done = set_dir / "shards" / "0" / "done.json"  # a set-level method: one shard
    run_stage("distill", cfg, {"method": "peer", "ipc": ipc, "shard": 0}, Files(pool=[]), Files(done=done))
    run_stage("gather", cfg, {"method": "peer", "ipc": ipc}, Files(shards=[done]),
              Files(meta=set_dir / "meta.json", grid=set_dir / "grid.png", log_json=set_dir / "log.json"))
    return set_dir


def _evaluate(cfg, set_dir, out):
    return run_stage("evaluate", cfg, {"method": "peer", "ipc": 2, "arch": "convnet", "seed": 0,
                                         "protocol": "teddy_small_hard"},
                     Files(distilled=set_dir / "meta.json"), Files(out))


def test_an_import_entry_is_evaluated_like_our_sets(tmp_path, fmnist_root):
    cfg = _cfg(tmp_path, fmnist_root, write_peer_set(tmp_path / "peer"))
    set_dir = _distill(cfg, tmp_path)
    meta = json.loads((set_dir / "meta.json").read_text())
    assert meta["counts"] == [2] * 10 and meta["image_size"] == 28 and meta["method"] == "peer"
    out = tmp_path / "results/eval/peer/ipc2/convnet/teddy_small_hard/seed0.json"
    result = _evaluate(cfg, set_dir, out)
    assert json.loads(out.read_text()) == result and 0 <= result["test_accuracy"] <= 1
    assert result["labels"] == "hard"


def test_bad_imports_and_bad_sets_are_one_line(tmp_path, fmnist_root):
    (tmp_path / "flat").mkdir()
    cfg = _cfg(tmp_path, fmnist_root, tmp_path / "flat")
    with pytest.raises(TeddyError, match="not an ImageFolder"):
        _distill(cfg, tmp_path)
    cfg = _cfg(tmp_path, fmnist_root, write_peer_set(tmp_path / "peer"))
    set_dir = _distill(cfg, tmp_path)
    out = tmp_path / "e.json"
    broken = set_dir / "images/0003/00001.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(TeddyError, match="unreadable image .*0003/00001.png"):
        _evaluate(cfg, set_dir, out)
    shutil.rmtree(set_dir / "images/0003")
    with pytest.raises(TeddyError, match="class folder 0003 is missing"):
        _evaluate(cfg, set_dir, out)
    assert not out.exists()  # nothing half-written


def test_evaluate_with_two_processes_launches_torchrun(tmp_path, fmnist_root):
    cfg = _cfg(tmp_path, fmnist_root, write_peer_set(tmp_path / "peer"))
    set_dir = _distill(cfg, tmp_path)
    cfg["evaluate"]["processes"] = 2  # gloo on CPU; gpus_per_job > 1 does the same with NCCL
    set_protocol(cfg, batch_size=8)
    out = tmp_path / "results/eval/peer/ipc2/convnet/teddy_small_hard/seed0.json"
    result = _evaluate(cfg, set_dir, out)
    assert result["processes"] == 2 and 0 <= result["test_accuracy"] <= 1
    assert json.loads(out.read_text()) == result
