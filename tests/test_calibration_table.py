"""benchmarks/calibration_table.py on written result files: random entries pool into one row
(one subset each), herding's networks are its experiments, a distilled entry is its own row set
beside DC's figure, and the 2-sigma verdict follows the published row."""

from __future__ import annotations

import importlib.util
import json

import yaml

from fixtures import REPO
from teddy.config import load_config


def _script():
    spec = importlib.util.spec_from_file_location("calibration_table", REPO / "benchmarks" / "calibration_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(name: str, results) -> dict:
    cfg = yaml.safe_load((REPO / "config" / name).read_text())
    cfg["results_dir"] = str(results)
    return load_config(cfg)


def _write(results, rel: str, accuracy: float) -> None:
    path = results / "eval" / f"{rel}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"test_accuracy": accuracy}))


def _row(body: str, start: str, ipc: int) -> str:
    return next(line for line in body.splitlines() if line.startswith(f"| {start}") and f"| {ipc} |" in line)


def test_random_subsets_pool_and_herding_networks_count(tmp_path):
    cfg = _config("calibration.yaml", tmp_path)
    for seed, name in enumerate(["random", "random_set1", "random_set2", "random_set3", "random_set4"]):
        _write(tmp_path, f"{name}/ipc10/convnet/dc/seed0", 0.73 + 0.002 * seed)   # near DC's 73.8 ± 0.7
        _write(tmp_path, f"{name}/ipc1/convnet/dc/seed0", 0.30 + 0.001 * seed)    # far under 51.4 ± 3.8
    for seed in range(3):
        _write(tmp_path, f"herding/ipc1/convnet/dc/seed{seed}", 0.65)
    body, _ = _script().table(cfg)
    assert "73.40 ± 0.32" in _row(body, "random (5 subsets", 10)
    assert "| yes" in _row(body, "random (5 subsets", 10)
    assert "| NO" in _row(body, "random (5 subsets", 1)
    assert "65.00" in _row(body, "herding (one set, 3 networks)", 1)
    whole = next(line for line in body.splitlines() if line.startswith("| whole training set (6 epochs)"))
    assert "not measured" in whole and "93.50 ± 0.10" in whole


def test_a_distilled_entry_is_its_own_row_beside_dcs_figure(tmp_path):
    cfg = _config("dc_comparison.yaml", tmp_path)
    for seed in range(3):
        _write(tmp_path, f"teddy_gradient/ipc1/convnet/dc/seed{seed}", 0.60)
        _write(tmp_path, f"gradient_fresh/ipc1/convnet/dc/seed{seed}", 0.55)
    body, _ = _script().table(cfg)
    assert "60.00 ± 0.00" in _row(body, "teddy_gradient (one set, 3 networks)", 1)
    assert "55.00 ± 0.00" in _row(body, "gradient_fresh (one set, 3 networks)", 1)
    assert "DC: 70.50" in _row(body, "teddy_gradient", 1)
    assert "whole training set" not in body and "bilevel" not in body  # no ceiling configured; bilevel not run
