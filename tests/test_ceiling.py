"""The ceiling stage (whole real training set, one training loop); the Fashion-MNIST paper
config's DAG (its ceiling jobs among them) is dry-run in tests/test_config_dry_runs.py."""

import json

import pytest
from fixtures import tiny_protocols

from teddy import stages
from teddy.errors import TeddyError
from teddy.job_files import Files
from teddy.pool import save_model
from teddy.stages import run_stage


def tiny_cfg(root, tmp_path):
    return {"dataset": {"name": "fashion_mnist", "root": str(root)}, "device": "cpu",
            "arch_options": {"convnet": {"depth": 1, "width": 4}}, "ceiling": {"epochs": 1},
            "protocols_dir": str(tiny_protocols(tmp_path / "protocols"))}


def test_ceiling_trains_the_protocol_on_the_whole_training_split(tmp_path, fmnist_root, one_thread):
    cfg = tiny_cfg(fmnist_root, tmp_path)
    hard = run_stage("ceiling", cfg, dict(arch="convnet", protocol="teddy_small_hard", seed=0), Files(),
                     Files(tmp_path / "hard.json"))
    assert hard["train_images"] == 270 and 0 <= hard["test_accuracy"] <= 1  # 300 minus the 10% val split
    saved = json.loads((tmp_path / "hard.json").read_text())
    assert saved["labels"] == "hard" and saved["protocol"] == "teddy_small_hard"
    save_model(tmp_path / "teacher.pt", stages.build(cfg, "convnet", seed=1), {})
    kd = run_stage("ceiling", cfg, dict(arch="convnet", protocol="teddy_small_kd", seed=0),
                   Files(teacher=[tmp_path / "teacher.pt"]), Files(tmp_path / "kd.json"))
    assert kd["labels"] == "online_kd" and kd["peak_gpu_mb"] is None  # CPU: no GPU memory to record


def test_the_ceiling_takes_the_protocols_student_and_a_shorter_schedule(tmp_path, fmnist_root):
    from teddy.config import fill_defaults

    cfg = fill_defaults(tiny_cfg(fmnist_root, tmp_path))
    cfg["protocols_dir"] = "config/protocols"  # the shipped dc protocol
    cfg["ceiling"]["epochs"] = 20
    settings = stages.stage("ceiling").settings(cfg, dict(arch="convnet", protocol="dc", seed=0))
    assert settings["model"] == {"arch": "convnet", "depth": 3, "width": 128, "norm": "instance",
                                 "mnist_padding": True}
    assert settings["recipe"]["epochs"] == 20 and settings["recipe"]["milestones"] == [10]
    with pytest.raises(TeddyError, match="unknown evaluation protocol 'nope'.*known: .*dc"):
        stages.stage("ceiling").settings(cfg, dict(arch="convnet", protocol="nope", seed=0))
