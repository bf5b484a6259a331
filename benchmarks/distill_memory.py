"""Does a distill shard's peak memory stay flat as IPC grows?

Peak memory of one distill shard at IPC 1, 10 and 50 with a fixed batch size: flat in IPC.

Writes a Tiny-ImageNet-shaped stand-in (200 classes, 64x64 JPEGs in the ImageFolder layout,
`--per-class` training images each), one pool member (a small ConvNet, BatchNorm statistics
recalibrated on the stand-in), then runs the `distill` stage (teddy.stages.distill) for the whole set as one shard
(every batch of the set in one job, the worst case for memory) in a fresh subprocess per IPC and
reads that process's peak resident set size (ru_maxrss). Prints a Markdown table; the figures go
to docs/distill_scale.md.

    PYTHONPATH=src .venv/bin/python benchmarks/distill_memory.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from teddy.stages import run_stage
from teddy.job_files import Files
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
done = run_stage("distill", a["cfg"], {"method": "teddy", "ipc": a["ipc"], "shard": 0}, Files(pool=a["members"]),
                 Files(done=a["out"] + "/done.json"))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0, "images": len(done["files"]),
                  "batches": len(done["batches"])}))
"""


def write_stand_in(root: Path, classes: int, per_class: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 1)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, size=(1, 1, 3))
            for j in range(n):
                noise = rng.integers(0, 60, size=(size, size, 3))
                Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(d / f"{j}.JPEG")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()

    import torch

    from teddy.datasets import load_split
    from teddy.models import build_model
    from teddy.pool import save_model
    from teddy.train import recalibrate_bn

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_stand_in(tmp / "data", 200, max(args.per_class, max(args.ipcs)), 64)
        section = {"name": "tiny_imagenet", "root": str(data), "val_fraction": 0.0}
        torch.manual_seed(0)
        member = build_model("convnet", 200, 3, 64, depth=3, width=16)
        recalibrate_bn(member, load_split(section, "train"), torch.device("cpu"), batches_to_use=2, batch_size=100)
        save_model(tmp / "member.pt", member, {"member": 0})
        cfg = {"dataset": section, "device": "cpu", "base": {"arch": "convnet"},
               "pools": {"prior": {"generator": "prior"}},
               "distill": {"seed": 0, "methods": {"teddy": {
                   "method": "teddy", "pool": "prior", "iterations": args.iterations, "batch_size": args.batch_size,
                   "lr": 0.1, "alpha": 1.0, "log_every": args.iterations,
                   "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 4}}}}}
        rows = []
        for ipc in args.ipcs:
            payload = {"cfg": cfg, "ipc": ipc, "members": [str(tmp / "member.pt")], "out": str(tmp / f"ipc{ipc}")}
            proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(proc.stderr[-3000:])
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            # what the pre-change harness held for the set: float32 pixels, their gradient, two Adam moments
            whole_set_mb = result["images"] * 3 * 64 * 64 * 4 * 4 / 2 ** 20
            rows.append((ipc, result["images"], result["batches"], result["peak_rss_mb"], whole_set_mb,
                         result["seconds"]))
    print(f"200 classes, 64x64, batch_size {args.batch_size}, {args.iterations} iterations per batch, "
          f"one shard holding every batch, torch {torch.__version__}, 1 thread\n")
    print("| IPC | images | batches | peak RSS of the shard (MB) | whole-set pixels + gradient + Adam moments, pre-change, computed (MB) | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    for ipc, images, batches, rss, whole, seconds in rows:
        print(f"| {ipc} | {images} | {batches} | {rss:.0f} | {whole:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
