"""Does training a student on two processes (DDP) learn what one process learns?

Students trained by one process and by two gloo processes (torch.distributed on CPU, launched
with torchrun through teddy.distributed.launch) with the same global batch: loss curves and
final accuracy side by side.

    PYTHONPATH=src .venv/bin/python benchmarks/ddp_vs_single.py

Two students: a ConvNet without normalisation (the two runs do the same sums in another order)
and the usual ConvNet with BatchNorm (statistics are then computed per process over half the
batch, as with gradient accumulation, so the runs differ slightly).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from teddy.data import TensorImageDataset
from teddy.distributed import init_from_env, is_main, launch
from teddy.models import build_model
from teddy.train import evaluate_accuracy, fit, targets_for

RECIPE = {"epochs": 30, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "temperature": 4.0,
          "hard_label_weight": 0.5, "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True}}


def data(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(320) % 10
    x = torch.randn(320, 1, 28, 28, generator=g)
    for c in range(10):  # a class-specific bright band, learnable in a few epochs
        x[y == c, :, 2 * c + 4:2 * c + 7, :] += 0.4
    return TensorImageDataset(x, y, [str(c) for c in range(10)])


def run(norm: str, teacher_path: str, out: str) -> None:
    torch.set_num_threads(1)
    device = init_from_env(torch.device("cpu"))
    teacher = build_model("convnet", 10, 1, 28, depth=2, width=16, norm=norm)
    teacher.load_state_dict(torch.load(teacher_path))
    torch.manual_seed(2)
    student = build_model("convnet", 10, 1, 28, depth=2, width=8, norm=norm)
    history = fit(student, data(1), RECIPE, device, seed=3, targets=targets_for(teacher.eval()))
    if is_main():
        torch.save({"loss": [h["loss"] for h in history], "acc": evaluate_accuracy(student, data(2), device)}, out)


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        for norm in ("none", "batch"):
            one, two, teacher_path = (str(Path(tmp) / f"{name}_{norm}.pt") for name in ("one", "two", "teacher"))
            torch.manual_seed(1)
            teacher = build_model("convnet", 10, 1, 28, depth=2, width=16, norm=norm)
            fit(teacher, data(0), {**RECIPE, "epochs": 5, "hard_label_weight": 1.0}, torch.device("cpu"), seed=0)
            torch.save(teacher.state_dict(), teacher_path)
            run(norm, teacher_path, one)
            launch(2, "ddp_vs_single:run", norm, teacher_path, two)
            a, b = torch.load(one), torch.load(two)
            print(f"\nConvNet, norm={norm}: loss per epoch (every 5th), 1 process vs 2 gloo processes")
            print("| epoch | 1 process | 2 processes | difference |")
            print("|---|---|---|---|")
            for e in list(range(0, RECIPE["epochs"], 5)) + [RECIPE["epochs"] - 1]:
                print(f"| {e + 1} | {a['loss'][e]:.6f} | {b['loss'][e]:.6f} | {abs(a['loss'][e] - b['loss'][e]):.1e} |")
            print(f"final accuracy on held-out generated data: 1 process {a['acc']:.4f}, 2 processes {b['acc']:.4f}")


if __name__ == "__main__":
    main()
