"""How close does the student training loop come to its own ceiling, and what does the ImageNet-1K grid cost?

The student step against its own ceiling: images per second of the pipeline's loop (one epoch
of teddy.train.fit with online KD, on a synthetic set of random uint8 images held on the device:
gather, normalise, per-image random-resized crop, flip and CutMix there) beside the bare step of
the same networks on random tensors at the same batch on the same device (the student's forward,
KD loss, backward and optimiser step, plus the teacher's forward: what no data pipeline can beat),
the ratio, peak GPU memory, and the projected GPU-hours of the ImageNet-1K student grid
(config/imagenet1k.yaml: methods x IPCs x (student, protocol) cells x seeds, each cell at its
protocol's epochs, training only).

GPU (the figures docs/gpu_loops.md asks for; about 3-4 minutes on an H100 for ResNet-18):

    PYTHONPATH=src .venv/bin/python benchmarks/student_throughput.py --device cuda

    # every student of the config (the grid's hours from each one's own rate), and the paths
    PYTHONPATH=src .venv/bin/python benchmarks/student_throughput.py --device cuda --grid
    PYTHONPATH=src .venv/bin/python benchmarks/student_throughput.py --device cuda --path memory

CPU (small sizes; checks that it runs, the figures say nothing about a GPU):

    PYTHONPATH=src .venv/bin/python benchmarks/student_throughput.py --device cpu --image-size 32 \\
        --batch 16 --steps 8 --warmup 2 --classes 10 --threads 1

The recipe is that of `--protocol` (default: config/imagenet1k.yaml's first evaluate.protocols
entry, sre2l_imagenet1k: AdamW, KD temperature, crops 0.08-1, flip, CutMix) with the config's
evaluate.amp / channels_last (bf16 autocast and channels-last on CUDA), at --batch with no
accumulation.
`--path` picks where the set lies: `device` (uint8 on the device, the default and what evaluate
does when the set fits evaluate.device_memory_fraction), `memory` (normalised float32 on the
host, copied per batch) or `stream` (PNGs written to a temporary folder and decoded by
--workers DataLoader workers, what evaluate does for sets that fit neither). `--compile` sets
the recipe's `compile: true` (torch.compile of student and teacher; CUDA only).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, config_jobs, grid_hours, second_epoch_rate, student_runs_per_ipc, table_head, timed

from teddy.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, TensorImageDataset
from teddy.distilled_set import from_uint8
from teddy.losses import kd_loss
from teddy.machine import resolve_device
from teddy.models import build_model
from teddy.protocols import config_protocol, config_protocols, evaluates
from teddy.recipes import autocast_for, compiled, make_optimizer
from teddy.student_data import PixelSet
from teddy.student_run import student_recipe_settings


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device):
    return round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None


def recipe_for(cfg: dict, args, device: torch.device) -> dict:
    """The protocol's recipe as rule evaluate runs it (evaluate.amp / channels_last added), two
    epochs at --batch."""
    recipe = student_recipe_settings(config_protocol(cfg, args.protocol)["recipe"], cfg["evaluate"])
    recipe.update({"epochs": 2, "batch_size": args.batch, "accumulate": 1, "checkpoint_every": 10**6,
                   "eval_every": 0, "warmup_epochs": 0})
    if args.compile:
        recipe["compile"] = True
    return recipe


def synthetic_set(args, device: torch.device, tmp: Path):
    """n random uint8 images, placed as --path says."""
    g = torch.Generator().manual_seed(0)
    n = args.set_size or args.batch * args.steps
    pixels = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % args.classes
    names = [str(c) for c in range(args.classes)]
    if args.path == "device":
        return PixelSet(pixels.to(device), labels, names, IMAGENET_MEAN, IMAGENET_STD)
    images = from_uint8(pixels, IMAGENET_MEAN, IMAGENET_STD)
    if args.path == "memory":
        return TensorImageDataset(images, labels, names)
    from teddy.distilled_set import index_within_class, read_set, write_images, write_meta

    per_class = n // args.classes
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(args.classes)])
    write_images(tmp / "set/images", images[keep], labels[keep], index_within_class(labels[keep]),
                 IMAGENET_MEAN, IMAGENET_STD)
    write_meta(tmp / "set", method="synthetic", ipc=per_class, class_names=names, mean=IMAGENET_MEAN,
               std=IMAGENET_STD, channels=3, image_size=args.image_size, config={})
    _, dataset = read_set(tmp / "set/meta.json")
    dataset.num_workers = args.workers
    return dataset


def pipeline_rate(arch: str, teacher, data, recipe: dict, args, device: torch.device) -> dict:
    """Images per second of fit's second epoch (the first warms up cuDNN, allocator, compile)."""
    torch.manual_seed(0)
    student = build_model(arch, args.classes, 3, args.image_size)
    reset_peak(device)
    rate = second_epoch_rate(student, data, recipe, device, teacher,
                             DatasetInfo("synthetic", args.classes, 3, args.image_size, IMAGENET_MEAN, IMAGENET_STD))
    return {"images_per_s": rate, "peak_gpu_mb": peak_mb(device)}


def ceiling_rate(arch: str, teacher, recipe: dict, args, device: torch.device) -> dict:
    """The bare step on random tensors: student forward, KD loss against the teacher's forward,
    backward and optimiser step, with the pipeline's precision and memory format; no data, no
    augmentation, no host work."""
    torch.manual_seed(0)
    amp, channels_last = bool(recipe.get("amp")), bool(recipe.get("channels_last")) and device.type == "cuda"
    student = build_model(arch, args.classes, 3, args.image_size).to(device).train()
    teacher = teacher.to(device).eval()
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    student_fwd, teacher_fwd = compiled(student, recipe, device), compiled(teacher, recipe, device)
    optimizer = make_optimizer(student.parameters(), recipe)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    temperature = float(recipe.get("temperature", 4.0))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, amp):
            with torch.no_grad():
                soft = teacher_fwd(x)
            loss = kd_loss(student_fwd(x).float(), soft.float(), temperature)
        loss.backward()
        optimizer.step()

    reset_peak(device)
    for _ in range(args.warmup):
        step()
    _, seconds = timed(lambda: [step() for _ in range(args.steps)], device)
    return {"images_per_s": args.batch * args.steps / seconds, "peak_gpu_mb": peak_mb(device)}


def student_grid(cfg: dict, rates: dict, timed_protocol: str) -> dict:
    """GPU-hours of the config's student grid, training only: epochs x IPC x classes images per
    run, one run per evaluate job (method, IPC, seed: each method's own IPCs and eval_seeds) of
    each (student, protocol) cell of a measured student, at the protocol's epochs and the
    student's rate. A measured student that no protocol of the config evaluates (a stand-in on
    CPU) is counted under `timed_protocol`, the protocol measured."""
    methods, seeds = list(cfg["distill"]["methods"]), list(cfg["evaluate"]["seeds"])
    protocols = config_protocols(cfg)
    grid_cells = [(arch, name) for arch in rates
                  for name in ([n for n, p in protocols.items() if evaluates(p, arch)] or [timed_protocol])]
    epochs = {name: int(config_protocol(cfg, name)["recipe"]["epochs"]) for _, name in grid_cells}
    runs = student_runs_per_ipc(config_jobs(cfg))
    table = grid_hours(runs, {arch: sum(epochs[p] for a, p in grid_cells if a == arch) for arch in rates}, rates,
                       classes=1000)
    return {"runs_per_ipc_and_cell": runs, "methods": methods, "seeds": seeds, "cells": grid_cells,
            "epochs": epochs, "hours": table,
            "total": sum(h for row in table.values() for h in row.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet18", help="student (default resnet18)")
    ap.add_argument("--teacher", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (the set is batch x steps images)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed ceiling steps")
    ap.add_argument("--set-size", type=int, default=0, help="images in the synthetic set (default batch x steps)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--path", choices=["device", "memory", "stream"], default="device")
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers of --path stream")
    ap.add_argument("--compile", action="store_true", help="recipe compile: true (CUDA only)")
    ap.add_argument("--grid", action="store_true", help="measure every student of the config")
    ap.add_argument("--protocol", default=None, help="evaluation protocol whose recipe is timed (default: the "
                                                     "config's first)")
    ap.add_argument("--config", default=str(REPO / "config/imagenet1k.yaml"))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default torch's; 1 on a shared machine)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = yaml.safe_load(Path(args.config).read_text())
    recipe = recipe_for(cfg, args, device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{name}; torch {torch.__version__}; {when}")
    print(f"batch {args.batch}, {args.image_size} px, {args.classes} classes, teacher {args.teacher}, "
          f"path {args.path}, "
          f"amp {bool(recipe.get('amp')) and device.type == 'cuda'}, channels_last "
          f"{bool(recipe.get('channels_last')) and device.type == 'cuda'}, compile {bool(recipe.get('compile'))}")
    archs = list(cfg["evaluate"]["students"]) if args.grid else [args.arch]
    rows = {}
    print("\n".join(table_head(["student", "pipeline images/s", "ceiling images/s", "ratio",
                                 "peak GPU MiB (pipeline / ceiling)"])))
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_set(args, device, Path(tmp))
        for arch in archs:
            torch.manual_seed(1)
            teacher = build_model(args.teacher, args.classes, 3, args.image_size)
            pipe = pipeline_rate(arch, teacher, data, recipe, args, device)
            torch.manual_seed(1)
            teacher = build_model(args.teacher, args.classes, 3, args.image_size)
            bare = ceiling_rate(arch, teacher, recipe, args, device)
            rows[arch] = {"pipeline": pipe, "ceiling": bare, "ratio": pipe["images_per_s"] / bare["images_per_s"]}
            print(f"| {arch} | {pipe['images_per_s']:.1f} | {bare['images_per_s']:.1f} | {rows[arch]['ratio']:.2f} | "
                  f"{pipe['peak_gpu_mb'] or 'n/a'} / {bare['peak_gpu_mb'] or 'n/a'} |", flush=True)
    grid = student_grid(cfg, {a: r["pipeline"]["images_per_s"] for a, r in rows.items()},
                      config_protocol(cfg, args.protocol)["name"])
    cells_text = ", ".join(f"{a}/{p} ({grid['epochs'][p]} epochs)" for a, p in grid["cells"])
    print(f"\nProjected hours of the {Path(args.config).name} student grid at the pipeline's rate "
          f"(runs per (student, protocol) cell, each method's IPCs and student seeds: "
          f"{', '.join(f'IPC {ipc} {n}' for ipc, n in grid['runs_per_ipc_and_cell'].items())}; cells {cells_text}; "
          f"training only; students measured: {', '.join(rows)}):")
    print("\n".join(table_head(["IPC", *rows, "total"])))
    for ipc, hours in grid["hours"].items():
        print(f"| {ipc} | " + " | ".join(f"{h:.1f}" for h in hours.values()) + f" | {sum(hours.values()):.1f} |")
    print(f"grid total: {grid['total']:.1f} device-hours" + ("" if device.type == "cuda" else " (CPU: not GPU-hours)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "date": when, "args": vars(args), "rows": rows,
                                               "grid": grid}, indent=1, default=str))


if __name__ == "__main__":
    main()
