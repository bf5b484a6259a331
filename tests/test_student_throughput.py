"""benchmarks/student_throughput.py runs on CPU with small sizes and writes its figures."""

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["device", "memory"])
def test_student_throughput_runs_on_cpu_and_projects_the_grid(tmp_path, monkeypatch, capsys, path):
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["student_throughput.py", "--device", "cpu", "--arch", "convnet", "--teacher",
                                      "convnet", "--image-size", "16", "--batch", "4", "--steps", "2", "--warmup", "1",
                                      "--classes", "4", "--threads", "1", "--path", path, "--json", str(out)])
    runpy.run_path(str(REPO / "benchmarks/student_throughput.py"), run_name="__main__")
    figures = json.loads(out.read_text())
    row = figures["rows"]["convnet"]
    assert row["pipeline"]["images_per_s"] > 0 and row["ceiling"]["images_per_s"] > 0
    assert row["pipeline"]["peak_gpu_mb"] is None  # CPU: no GPU memory figure
    assert list(figures["grid"]["hours"]) == ["10", "50", "100"]  # config/imagenet1k.yaml's IPCs
    # config/imagenet1k.yaml's evaluate jobs per cell: 5 methods x 3 seeds at each IPC
    assert figures["grid"]["runs_per_ipc_and_cell"] == {"10": 15, "50": 15, "100": 15}
    assert figures["grid"]["cells"] == [["convnet", "sre2l_imagenet1k"]]  # the measured student, each protocol
    assert "grid total" in capsys.readouterr().out
