"""What does one distillation iteration cost, per method and per unrolled step count?

Cost of one distillation iteration: teddy (statistics and gradient matching), sre2l and the
unrolled bilevel objective at K = 1, 5, 10, 20, on the same batch and model, in one run.

Each configuration runs through the real harness (`optimise_synthetic`) with its real loss
function; a wrapper marks the start of every loss call, so one interval covers exactly one
iteration (sampling, augmentation, pool draw, loss, backward, Adam step, clipping). Reported:
the median interval after warm-up, and the peak memory of an iteration above the memory held
when it started (the largest over the timed iterations).

Peak memory. CUDA: torch.cuda.max_memory_allocated, reset at each iteration start. CPU: the
peak resident set size (VmHWM, reset through /proc/self/clear_refs at each iteration start)
minus the resident size at that start, i.e. an RSS delta. tracemalloc cannot be used: it sees
Python objects, not the tensors torch allocates. On CPU the memory pass runs in its own process
with MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns large freed blocks to the system at
once and one configuration's delta is not hidden by memory cached from the previous one; that
setting slows allocation, so times come from a separate pass under the default allocator.

What "K" means per method: bilevel unrolls K SGD steps of a fresh model. Teddy replaces the K
model states by K models of a cached pool, matched one per iteration; its rows use a pool of K
members, so they show whether its per-iteration cost depends on K (it should not). sre2l
matches one model, so it has one row.

    .venv/bin/python benchmarks/distill_cost.py [--threads 1] [--device cpu] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, cpu_name

from teddy.data import TensorImageDataset
from teddy.datasets import dataset_info, load_split
from teddy.methods import bilevel, full_recipe, teddy
from teddy.methods.base import HARNESS_DEFAULTS, DistillTask, chosen_real, optimise_synthetic, start_batch
from teddy.models import build_model
from teddy.pool import WeakPool
from teddy.shards import batch_plan

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class IterationMeter:
    """Wraps a loss function; records time and peak memory between consecutive calls."""

    def __init__(self, loss_fn, device: torch.device):
        self.loss_fn, self.device = loss_fn, device
        self.seconds, self.peak_mb = [], []
        self.last_time = self.base = None

    def _mark(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.last_time is not None:
            self.seconds.append(now - self.last_time)
            if self.device.type == "cuda":
                self.peak_mb.append((torch.cuda.max_memory_allocated() - self.base) / 2 ** 20)
            else:
                self.peak_mb.append((proc_status_kb("VmHWM") - self.base) / 1024)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = proc_status_kb("VmRSS")
        self.last_time = time.perf_counter()

    def __call__(self, model, x, y, iteration):
        self._mark()
        return self.loss_fn(model, x, y, iteration)


def conv_pool(size: int, info, width: int, device) -> WeakPool:
    members = []
    for i in range(size):
        torch.manual_seed(i)  # weights do not change the cost; untrained members are enough
        members.append(build_model("convnet", info.num_classes, info.channels, info.image_size, depth=3,
                                   width=width).to(device))
    return WeakPool(members, [f"member{i}" for i in range(size)])


def measure(name, k, task, loss_fn, warmup, repeats):
    # batch 0 started as the harness starts it (base.run_batches): real images, or noise for sre2l
    labels, index_in_class = batch_plan(task.info.num_classes, task.ipc, int(task.recipe["batch_size"]))[0]
    init = task.recipe.get("init", HARNESS_DEFAULTS["init"])
    chosen = chosen_real(task, torch.Generator().manual_seed(task.seed)) if init == "real" else None
    images, generator, _ = start_batch(task, 0, labels, index_in_class, chosen)
    meter = IterationMeter(loss_fn, task.device)
    task.recipe["iterations"] = warmup + repeats + 1  # the last call only closes the previous interval
    optimise_synthetic(task, images, labels, meter, generator, desc=f"{name} K={k}")
    row = {"method": name, "K": k, "ms_per_iteration": 1000 * statistics.median(meter.seconds[warmup:]),
           "peak_mb": max(meter.peak_mb[warmup:])}
    print(row, file=sys.stderr, flush=True)
    return row


def measure_all(args) -> tuple[list[dict], str]:
    """Every configuration, in this process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = dataset_info("fashion_mnist")
    if FASHION_MNIST.is_dir():
        real = load_split({"name": "fashion_mnist", "root": str(FASHION_MNIST)}, "train")
        data_note = "real Fashion-MNIST"
    else:
        torch.manual_seed(0)
        real = TensorImageDataset(torch.randn(5000, 1, 28, 28), torch.arange(5000) % 10, [str(c) for c in range(10)])
        data_note = "random tensors (Fashion-MNIST not found)"
    common = {"batch_size": args.ipc * info.num_classes, "lr": 0.01, "log_every": 10 ** 6,
              "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2}}

    def task(pool, recipe):
        return DistillTask(real, info, pool, args.ipc, {**common, **recipe}, seed=0, device=device)

    rows = []
    for k in args.ks:
        pool = conv_pool(k, info, args.width, device)
        t = task(pool, {"matching": "statistics"})
        rows.append(measure("teddy statistics", k, t, teddy.statistics_loss_fn(t.recipe), args.warmup, args.repeats))
        t = task(pool, {"matching": "gradient"})
        cache = teddy.real_gradients(pool, real, info.num_classes, 64, torch.Generator().manual_seed(1), device)
        rows.append(measure("teddy gradient", k, t, teddy.gradient_loss_fn(pool, cache), args.warmup, args.repeats))
    t = task(conv_pool(1, info, args.width, device), full_recipe(common, "sre2l"))
    rows.append(measure("sre2l", 1, t, teddy.statistics_loss_fn(t.recipe), args.warmup, args.repeats))
    for k in args.ks:
        t = task(None, {"unroll_steps": k, "inner_lr": 0.01, "real_batch_size": 256,
                        "inner_arch_options": {"depth": 3, "width": args.width}})
        rows.append(measure("bilevel", k, t, bilevel.bilevel_loss_fn(t), args.warmup, args.repeats))
    return rows, data_note


def run_pass(which: str) -> tuple[list[dict], str]:
    """One pass in a child process: `time` under the default allocator, `memory` with large
    blocks returned to the system on free (CPU)."""
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if which == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--pass", which], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["rows"], result["data"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--width", type=int, default=32, help="ConvNet-3 width (the pipeline's default: 32)")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--pass", dest="which", choices=["time", "memory", "both"],
                    help="internal: run one pass in this process and print its rows as JSON")
    args = ap.parse_args()
    if args.which:
        rows, data_note = measure_all(args)
        print(json.dumps({"rows": rows, "data": data_note}))
        return

    load_at_start = os.getloadavg()[0]
    if args.device.startswith("cuda"):  # the caching allocator's counters: one pass gives both
        rows, data_note = run_pass("both")
    else:
        rows, data_note = run_pass("time")
        memory_rows, _ = run_pass("memory")
        for row, memory_row in zip(rows, memory_rows):
            row["peak_mb"] = memory_row["peak_mb"]
    load_at_end = os.getloadavg()[0]

    def row(name, k):
        return next(r for r in rows if r["method"] == name and r["K"] == k)

    lines = ["| method | K | ms / iteration (median) | peak MB of an iteration |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['K']} | {r['ms_per_iteration']:.1f} | {r['peak_mb']:.1f} |" for r in rows]
    table = "\n".join(lines)
    checks = []
    for name in ("teddy statistics", "teddy gradient"):
        mems = [row(name, k)["peak_mb"] for k in args.ks]
        times = [row(name, k)["ms_per_iteration"] for k in args.ks]
        checks.append(f"- {name}: peak memory over K = {', '.join(map(str, args.ks))}: "
                      f"{min(mems):.1f} to {max(mems):.1f} MB; time {min(times):.1f} to {max(times):.1f} ms")
    if 10 in args.ks:
        b = row("bilevel", 10)
        for name in ("teddy statistics", "teddy gradient"):
            r = row(name, 10)
            speed, memory = b["ms_per_iteration"] / r["ms_per_iteration"], b["peak_mb"] / max(r["peak_mb"], 1e-9)
            checks.append(f"- K = 10, bilevel / {name}: {speed:.1f}x the time per iteration "
                          f"({'meets' if speed >= 5 else 'MISSES'} the 5x target), {memory:.1f}x the peak memory "
                          f"({'meets' if memory >= 5 else 'MISSES'} the 5x target)")
    device = torch.device(args.device)
    memory_note = ("torch.cuda.max_memory_allocated above the allocation at iteration start" if device.type == "cuda"
                   else "peak RSS (VmHWM, reset per iteration) minus RSS at iteration start, measured in a "
                        "second pass with glibc MALLOC_MMAP_THRESHOLD_=65536")
    batch = args.ipc * 10
    header = (f"Measured {datetime.date.today().isoformat()} by `benchmarks/distill_cost.py` (one run), "
              f"{platform.machine()} {cpu_name()}, {os.cpu_count()} CPU cores visible (shared with other jobs), "
              f"torch {torch.__version__}, device {device}, {args.threads} thread(s). Batch: IPC {args.ipc} x "
              f"10 classes = {batch} images 1x28x28 ({data_note}), augmented (crop, flip, shift); "
              f"model ConvNet-3 width {args.width} with BatchNorm; bilevel's outer loss on 256 real images. "
              f"{args.warmup} warm-up iterations, then the median time of {args.repeats}; memory: {memory_note}; "
              f"peak = the largest of the {args.repeats}. Machine load (1-minute load average) at start / end: "
              f"{load_at_start:.2f} / {load_at_end:.2f}; timings move with other jobs' load on a shared "
              f"machine, the memory column does not.")
    print(table)
    print("\n".join(checks))
    text = f"""# Distillation cost per iteration

Written by `benchmarks/distill_cost.py`; rerunning it replaces this file.

{header}

{table}

Checks against the targets (teddy's memory flat in K; at K = 10, bilevel at least 5x slower
and at least 5x more peak memory per iteration than teddy):

""" + "\n".join(checks) + """

How to read it: a teddy iteration is one forward/backward of one pool model (statistics) or, for
gradient matching, one small forward per class plus a double backward through it; which of the K
pool members is drawn does not change that, so its rows are flat in K (the gradient form also
keeps K x classes cached real gradients resident, outside the iteration). A bilevel iteration
builds a fresh model, keeps the graph of K SGD steps and back-propagates the real-batch loss
through all of them, so its time and memory grow with K.
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    marker = "<!-- begin distill_time.py -->"  # benchmarks/distill_time.py's section: kept as it is
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    Path(args.out).write_text(text + ("\n" + marker + old.split(marker, 1)[1] if marker in old else ""))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
