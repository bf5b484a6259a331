"""The ceiling stage (whole real training set, one training loop); the Fashion-MNIST paper
config's DAG (its ceiling jobs among them) is dry-run in tests/test_config_dry_runs.py."""

import json

import pytest

from teddy import stages
from teddy.stages import Files, run_stage
from teddy.errors import TeddyError
from teddy.pool import save_model

RECIPE = {"epochs": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "augment": {}}


def tiny_cfg(root):
    return {"dataset": {"name": "fashion_mnist", "root": str(root)}, "device": "cpu",
            "arch_options": {"convnet": {"depth": 1, "width": 4}}, "ceiling": {"recipe": RECIPE}}


def test_ceiling_trains_on_the_whole_training_split(tmp_path, fmnist_root, one_thread):
    cfg = tiny_cfg(fmnist_root)
    hard = run_stage("ceiling", cfg, dict(arch="convnet", labels="hard", seed=0), Files(), Files(tmp_path / "hard.json"))
    assert hard["train_images"] == 270 and 0 <= hard["test_accuracy"] <= 1  # 300 minus the 10% val split
    assert json.loads((tmp_path / "hard.json").read_text())["labels"] == "hard"
    save_model(tmp_path / "teacher.pt", stages.build(cfg, "convnet", seed=1), {})
    kd = run_stage("ceiling", cfg, dict(arch="convnet", labels="online_kd", seed=0),
                   Files(teacher=[tmp_path / "teacher.pt"]), Files(tmp_path / "kd.json"))
    assert kd["labels"] == "online_kd" and kd["peak_gpu_mb"] is None  # CPU: no GPU memory to record
    with pytest.raises(TeddyError, match="ceiling label protocol must be hard or online_kd"):
        run_stage("ceiling", cfg, dict(arch="convnet", labels="stored", seed=0), Files(), Files(tmp_path / "x.json"))
