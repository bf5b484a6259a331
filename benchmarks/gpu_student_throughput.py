"""How fast does KD student training run at 224 px on one GPU? (Superseded by benchmarks/student_throughput.py.)

Kept because docs/eval_scale.md and teddy.resources cite its H100 figures; student_throughput.py
--device cuda --grid measures the same loop beside its ceiling, on every data path.

Images per second of student training with online KD at 224 px on one GPU (bf16 autocast,
channels-last, AdamW, per-image random-resized crops, flip and CutMix on the device), for the
students of config/imagenet1k.yaml with a ResNet-18 teacher on synthetic data, and the
projected GPU-hours of that config's evaluation grid (its evaluate jobs: each method's IPCs and
student seeds, per (student, protocol) cell, each cell at its protocol's epochs).

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_student_throughput.py [--batch 256] [--steps 20]

Without CUDA it says so and exits 0. The whole loop is timed (teddy.train.fit: host to
device copy, augmentation, teacher and student forward, backward, optimiser), second epoch only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, config_jobs, grid_hours, second_epoch_rate, student_runs_per_ipc, table_head

from teddy.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, TensorImageDataset
from teddy.models import build_model
from teddy.protocols import cells, config_protocol


def images_per_second(arch: str, teacher, data, batch: int, device) -> float:
    student = build_model(arch, 1000, 3, 224)
    recipe = {"epochs": 2, "batch_size": batch, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01,
              "temperature": 20.0, "amp": True, "channels_last": True,
              "augment": {"crop": True, "crop_scale": [0.08, 1.0], "flip": True, "cutmix": 1.0}}
    return second_epoch_rate(student, data, recipe, device, teacher,
                             DatasetInfo("synthetic", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--config", default=str(REPO / "config/imagenet1k.yaml"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run this on a GPU machine)")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    cfg = yaml.safe_load(Path(args.config).read_text())
    n = args.batch * args.steps
    data = TensorImageDataset(torch.randn(n, 3, 224, 224), torch.arange(n) % 1000, [str(c) for c in range(1000)])
    teacher = build_model("resnet18", 1000, 3, 224).to(device).to(memory_format=torch.channels_last).eval()
    print(f"GPU: {torch.cuda.get_device_name(0)}; batch {args.batch}, {args.steps} steps timed; torch {torch.__version__}")
    print("\n".join(table_head(["student", "images/s"])))
    rates = {}
    for arch in cfg["evaluate"]["students"]:
        rates[arch] = images_per_second(arch, teacher, data, args.batch, device)
        print(f"| {arch} | {rates[arch]:.0f} |", flush=True)
    runs = student_runs_per_ipc(config_jobs(cfg))
    # epochs of each (student, protocol) cell of the grid, summed per student
    epochs = [(arch, int(config_protocol(cfg, name)["recipe"]["epochs"])) for arch, name in cells(cfg)]
    hours = grid_hours(runs, {a: sum(e for arch, e in epochs if arch == a) for a in rates}, rates, classes=1000)
    print(f"\nProjected GPU-hours of the evaluation grid (runs per (student, protocol) cell, each method's IPCs "
          f"and student seeds: {', '.join(f'IPC {ipc} {n}' for ipc, n in runs.items())}; cells "
          f"{', '.join(f'{a}/{p}' for a, p in cells(cfg))}, each at its protocol's epochs, training only):")
    print("\n".join(table_head(["IPC", *rates, "total"])))
    for ipc, row in hours.items():
        print(f"| {ipc} | " + " | ".join(f"{h:.1f}" for h in row.values()) + f" | {sum(row.values()):.1f} |")
    print(f"grid total: {sum(sum(row.values()) for row in hours.values()):.1f} GPU-hours")


if __name__ == "__main__":
    main()
