"""The ceiling stage (whole real training set, one training loop) and the paper config's DAG."""

import json
import re

import pytest
import yaml

from teddy import stages
from teddy.stages import Files, run_stage
from teddy.errors import TeddyError
from teddy.pool import save_model
from test_paper_configs import job_counts
from test_workflow import REPO, snakemake

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


def test_fashion_mnist_paper_config_dry_runs_with_every_job(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "fashion_mnist_paper.yaml").read_text())
    assert cfg["distill"]["ipc"] == [1, 10, 50] and len(cfg["evaluate"]["seeds"]) == 3
    assert set(cfg["distill"]["methods"]) == {"teddy", "sre2l", "herding", "random", "rded"}
    assert set(cfg["evaluate"]["labels"]) == {"online_kd", "hard"}
    assert {"convnet", "resnet10_w16"} <= set(cfg["evaluate"]["students"])
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "fashion_mnist_paper.yaml"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    counts = job_counts(proc.stdout + proc.stderr)
    # one evaluate job per label protocol once evaluate's output path has a {labels} level
    per_protocol = "{labels}" in (REPO / "workflow" / "rules" / "evaluate.smk").read_text()
    assert counts["evaluate"] == 5 * 3 * 2 * 3 * (2 if per_protocol else 1)
    assert counts["ceiling"] == 2 * 2 and counts["distill"] == 15 and counts["aggregate"] == 1
    assert counts["pool_member"] == 3  # prior epochs 1, 2 and the single base model
