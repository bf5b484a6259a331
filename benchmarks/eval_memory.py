"""How much memory does a student job need, with the set in memory or streamed from PNGs?

Peak memory of one student-training job on a generated 100-class, 224-pixel stand-in set at
IPC 1, 10 and 50: the set held in memory (the small-set fast path) against the set streamed
from its PNGs by DataLoader workers (what evaluate does above evaluate.in_memory_max_mb).

    PYTHONPATH=src .venv/bin/python benchmarks/eval_memory.py [--ipcs 1 10 50] [--workers 2]

Each measurement runs in a fresh process: it reads the set, trains a small ConvNet for one
epoch (batch 50, per-image random-resized crops, flip) and prints its own peak RSS and that of
its largest worker (getrusage). Figures go to docs/eval_scale.md.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import timed

from teddy.data import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from teddy.distilled_set import write_images, write_meta

CLASSES, SIZE = 100, 224


def make_set(set_dir: Path, ipc: int) -> None:
    g = torch.Generator().manual_seed(ipc)
    for c in range(CLASSES):  # smooth random images: realistic PNG sizes, quick to write
        low = torch.randn(ipc, 3, 14, 14, generator=g)
        images = F.interpolate(low, size=SIZE, mode="bilinear", align_corners=False)
        write_images(set_dir / "images", images, torch.full((ipc,), c), range(ipc), IMAGENET_MEAN, IMAGENET_STD)
    write_meta(set_dir, method="standin", ipc=ipc, class_names=[str(c) for c in range(CLASSES)], mean=IMAGENET_MEAN,
               std=IMAGENET_STD, channels=3, image_size=SIZE, config={})


def child(set_dir: str, mode: str, workers: int) -> None:
    from teddy.models import build_model
    from teddy.student_data import load_student_set
    from teddy.train import fit

    torch.set_num_threads(1)
    limit = 1e9 if mode == "memory" else 0
    dataset, meta = load_student_set(Path(set_dir) / "meta.json", in_memory_max_mb=limit, num_workers=workers)
    info = DatasetInfo("standin", CLASSES, 3, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    model = build_model("convnet", CLASSES, 3, SIZE, depth=2, width=8)
    recipe = {"epochs": 1, "batch_size": 50, "optimizer": "adamw", "lr": 1e-3,
              "augment": {"crop": True, "crop_scale": [0.08, 1.0], "flip": True}}
    _, seconds = timed(lambda: fit(model, dataset, recipe, torch.device("cpu"), seed=0, info=info))
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del dataset
    import gc

    gc.collect()
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{main_mb:.0f} {worker_mb:.0f} {seconds:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-max-ipc", type=int, default=10, help="skip the in-memory run above this IPC")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.workers)
    print("| IPC | images | set as float32 (MB) | PNGs on disk (MB) | mode | peak RSS main (MB) | peak RSS largest worker (MB) | epoch (s) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for ipc in args.ipcs:
            set_dir = Path(tmp) / f"ipc{ipc}"
            make_set(set_dir, ipc)
            disk = sum(p.stat().st_size for p in set_dir.rglob("*.png")) / 2**20
            n = ipc * CLASSES
            for mode in ("memory", "streamed"):
                if mode == "memory" and ipc > args.memory_max_ipc:
                    print(f"| {ipc} | {n} | {n * 3 * SIZE * SIZE * 4 / 2**20:.0f} | {disk:.0f} | memory | not run "
                          f"(the set alone is the float32 size) | - | - |", flush=True)
                    continue
                out = subprocess.run([sys.executable, __file__, "--child", str(set_dir), mode, "--workers",
                                      str(args.workers)], capture_output=True, text=True, check=True).stdout.split()
                workers = out[1] if mode == "streamed" else "-"
                print(f"| {ipc} | {n} | {n * 3 * SIZE * SIZE * 4 / 2**20:.0f} | {disk:.0f} | {mode} | {out[0]} | "
                      f"{workers} | {out[2]} |", flush=True)


if __name__ == "__main__":
    main()
