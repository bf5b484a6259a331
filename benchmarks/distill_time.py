"""How long does each method take per synthetic image, end to end?

Whole-distillation time per synthetic image: rded beside teddy and sre2l, same data, same
machine, one run each, through `teddy.methods.get_method` (what the distill rule calls).

Setting (Fashion-MNIST shapes, the default config's): the real training split of
config/config.yaml's dataset, ConvNet-3 width 32 models (untrained: the weights do not change the
cost), teddy with the default config's recipe and a pool of two members (the default prior pool
has two), sre2l with the same iterations and batch against one model (SRe2L's own default is
4000 iterations: its time grows linearly with them), rded with the peers' settings (5 crops of
each of 300 real images per class) at factor 1 (the small-image setting) and factor 2.
Reported: wall seconds of the whole `distill(task)` call, divided by the number of synthetic
images (IPC x 10).

    .venv/bin/python benchmarks/distill_time.py [--threads 1] [--device cpu] [--ipcs 1 10]

Writes its section into docs/benchmarks.md between the markers below (the rest of the file
belongs to benchmarks/distill_cost.py, which keeps this section when it rewrites the file).
On CUDA (--device cuda) the same script measures the GPU; without CUDA that option says so and
exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, cpu_name, timed

from teddy.datasets import dataset_info, load_split
from teddy.methods import DistillTask, get_method
from teddy.models import build_model
from teddy.pool import WeakPool

BEGIN, END = "<!-- begin distill_time.py -->", "<!-- end distill_time.py -->"


def convnets(count: int, info) -> list[torch.nn.Module]:
    members = []
    for i in range(count):
        torch.manual_seed(i)
        members.append(build_model("convnet", info.num_classes, info.channels, info.image_size, depth=3, width=32))
    return members


def replace_section(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else ""
    block = f"{BEGIN}\n{section.strip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA asked for but not available: nothing measured")
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    info = dataset_info(cfg["dataset"])
    real = load_split(cfg["dataset"], "train")
    teddy_recipe = {k: v for k, v in cfg["distill"]["methods"]["teddy"].items() if k != "pool"}
    same_length = {"iterations": teddy_recipe["iterations"], "batch_size": teddy_recipe["batch_size"],
                   "log_every": 10 ** 6}
    cases = [
        ("teddy", teddy_recipe, 2),
        ("sre2l", {"method": "sre2l", **same_length}, 1),
        ("rded factor 1", {"method": "rded", "factor": 1}, 1),
        ("rded factor 2", {"method": "rded", "factor": 2}, 1),
    ]
    rows = []
    load_at_start = os.getloadavg()[0]
    for ipc in args.ipcs:
        for name, recipe, members in cases:
            pool = WeakPool(convnets(members, info), ["base"] if members == 1 else [f"m{i}" for i in range(members)])
            task = DistillTask(real, info, pool, ipc, dict(recipe), seed=0, device=device)
            result, seconds = timed(lambda: get_method(recipe["method"])(task), device)
            row = {"method": name, "ipc": ipc, "images": len(result.labels), "seconds": seconds,
                   "per_image": seconds / len(result.labels)}
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
    load_at_end = os.getloadavg()[0]

    lines = ["| method | IPC | synthetic images | seconds (whole distillation) | seconds per synthetic image |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['ipc']} | {r['images']} | {r['seconds']:.1f} | {r['per_image']:.3f} |"
              for r in rows]
    table = "\n".join(lines)
    print(table)
    section = f"""## Whole distillation: seconds per synthetic image (rded, teddy, sre2l)

Written by `.venv/bin/python benchmarks/distill_time.py --threads {args.threads} --device {args.device} --ipcs {' '.join(map(str, args.ipcs))}`
(one run, {datetime.date.today().isoformat()}): {platform.machine()} {cpu_name()}, {os.cpu_count()} CPU cores
visible (shared with other jobs), torch {torch.__version__}, device {device}, {args.threads} thread(s); 1-minute
load average at start / end {load_at_start:.2f} / {load_at_end:.2f}. Real Fashion-MNIST training split
({len(real)} images), ConvNet-3 width 32 models. teddy: the default config's recipe
({teddy_recipe['iterations']} iterations, batch {teddy_recipe['batch_size']}) against a pool of 2 members;
sre2l: the same iterations and batch against one model (its own default is 4000 iterations, and its
time is linear in them); rded: 5 crops of each of 300 real images per class scored by one model, then
stitched (factor 1: whole crops; factor 2: 2 x 2 patches). Each figure is the wall time of the whole
`distill(task)` call divided by the synthetic images it made.

{table}

How to read it: teddy and sre2l pay per optimisation iteration, so their time per image falls as
IPC fills the batch and grows with the iterations; rded pays per real image scored (300 x 5 crops
per class, whatever the IPC), so its time per image falls as IPC grows. rded's figures include
the Python loop that takes the crops one by one (torchvision's RandomResizedCrop parameters).
"""
    replace_section(Path(args.out), section)
    print(f"section written to {args.out}")


if __name__ == "__main__":
    main()
