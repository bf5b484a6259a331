"""How long does the demo's student loop take, and did a change make it faster?

Wall time of the Fashion-MNIST demo's student loop (config/config.yaml: ConvNet-3 width 32,
the recipe of its first protocol, teddy_small_kd: 400 epochs, AdamW, online KD from a ConvNet
teacher, flip + shift) on a 100-image set (IPC 10),
one thread. Run it with PYTHONPATH pointing at two checkouts to compare them:

    PYTHONPATH=src .venv/bin/python benchmarks/demo_student_loop.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, timed

from teddy.data import TensorImageDataset
from teddy.models import build_model
from teddy.protocols import config_protocol
from teddy.train import fit, targets_for



def main() -> None:
    torch.set_num_threads(1)
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    recipe = {**config_protocol(cfg)["recipe"], "checkpoint_every": 10**6}
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.randn(100, 1, 28, 28, generator=g), torch.arange(100) % 10,
                              [str(c) for c in range(10)])
    torch.manual_seed(1)
    teacher = build_model("convnet", 10, 1, 28, depth=3, width=32).eval()
    times = []
    for _ in range(3):
        torch.manual_seed(2)
        student = build_model("convnet", 10, 1, 28, depth=3, width=32)
        history, seconds = timed(lambda: fit(student, data, recipe, torch.device("cpu"), seed=0,
                                             targets=targets_for(teacher)))
        times.append(seconds)
    print(f"{recipe['epochs']} epochs: best of 3 {min(times):.2f} s (all: {', '.join(f'{t:.2f}' for t in times)}); "
          f"final loss {history[-1]['loss']:.6f}")


if __name__ == "__main__":
    main()
