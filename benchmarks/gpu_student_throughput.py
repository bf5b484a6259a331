"""Images per second of student training with online KD at 224 px on one GPU (bf16 autocast,
channels-last, AdamW, per-image random-resized crops, flip and CutMix on the device), for the
students of config/imagenet1k.yaml with a ResNet-18 teacher on synthetic data, and the
projected GPU-hours of that config's evaluation grid (methods x IPC x (student, protocol) cells x
seeds, each cell at its protocol's epochs).

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_student_throughput.py [--batch 256] [--steps 20]

Without CUDA it says so and exits 0. The whole loop is timed (teddy.train.fit: host to
device copy, augmentation, teacher and student forward, backward, optimiser), second epoch only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from teddy.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, TensorImageDataset
from teddy.models import build_model
from teddy.protocols import cells, config_protocol
from teddy.train import fit, targets_for

REPO = Path(__file__).resolve().parents[1]


def images_per_second(arch: str, teacher, data, batch: int, device) -> float:
    student = build_model(arch, 1000, 3, 224)
    recipe = {"epochs": 2, "batch_size": batch, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01,
              "temperature": 20.0, "amp": True, "channels_last": True,
              "augment": {"crop": True, "crop_scale": [0.08, 1.0], "flip": True, "cutmix": 1.0}}
    stamps = []

    def stamp(epoch, model, metrics):
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    torch.cuda.synchronize()
    fit(student, data, recipe, device, seed=0, targets=targets_for(teacher), on_epoch_end=stamp,
        info=DatasetInfo("synthetic", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD))
    return len(data) / (stamps[1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser()
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
    print("| student | images/s |")
    print("|---|---|")
    rates = {}
    for arch in cfg["evaluate"]["students"]:
        rates[arch] = images_per_second(arch, teacher, data, args.batch, device)
        print(f"| {arch} | {rates[arch]:.0f} |", flush=True)
    ev = cfg["evaluate"]
    methods, seeds = list(cfg["distill"]["methods"]), ev["seeds"]
    # epochs of each (student, protocol) cell of the grid
    epochs = [(arch, int(config_protocol(cfg, name)["recipe"]["epochs"])) for arch, name in cells(cfg)]
    print(f"\nProjected GPU-hours of the evaluation grid ({len(methods)} methods x {len(seeds)} seeds x "
          f"(student, protocol) cells {', '.join(f'{a}/{p}' for a, p in cells(cfg))}, each at its protocol's "
          f"epochs, training only):")
    print("| IPC | " + " | ".join(rates) + " | total |")
    print("|---|" + "---|" * (len(rates) + 1))
    grand = 0.0
    for ipc in cfg["distill"]["ipc"]:
        hours = {a: sum(e for arch, e in epochs if arch == a) * ipc * 1000 / r / 3600 * len(methods) * len(seeds)
                 for a, r in rates.items()}
        grand += sum(hours.values())
        print(f"| {ipc} | " + " | ".join(f"{h:.1f}" for h in hours.values()) + f" | {sum(hours.values()):.1f} |")
    print(f"grid total: {grand:.1f} GPU-hours")


if __name__ == "__main__":
    main()
