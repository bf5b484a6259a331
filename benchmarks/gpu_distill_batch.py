"""How fast is one ImageNet-shaped synthetic batch on a GPU, and what would ImageNet-1K distillation cost?

One ImageNet-shaped synthetic batch on the GPU: seconds per 1000 steps, peak GPU memory, and the
GPU-hours of ImageNet-1K distillation projected from them.

torchvision's ResNet-18 (random weights, 1000 classes) as the one pool member; a batch of 100
images at 224 px; teddy's statistics loss through the real harness
(`teddy.methods.base.optimise_synthetic`: augmentation, Adam, cosine schedule, clipping, NaN
guard). Timed: `--steps` steps after `--warmup` steps, CUDA synchronised, for bf16 autocast with
channels-last (recipe keys amp, channels_last) and for plain float32. ImageNet-1K at IPC
10 / 50 / 100 is 100 / 500 / 1000 such batches of 4000 steps each (teddy.shards.batch_plan), per
method. Without CUDA it says so and exits 0.

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_distill_batch.py
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=4000, help="steps per batch in the projection")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures the GPU only; nothing measured")
        return

    from teddy.datasets import dataset_info
    from teddy.methods.base import DistillTask, optimise_synthetic
    from teddy.methods.teddy import statistics_loss_fn
    from teddy.models import build_model
    from teddy.pool import WeakPool
    from teddy.shards import num_batches

    device = torch.device("cuda")
    info = dataset_info("imagenet1k")
    torch.manual_seed(0)
    pool = WeakPool([build_model("resnet18", 1000, 3, 224)], ["resnet18"]).to(device)
    base = {"lr": 0.25, "alpha": 0.01, "first_bn_weight": 10.0, "ce_weight": 1.0, "log_every": 10 ** 9,
            "augment": {"crop": True, "crop_scale": [0.08, 1.0], "flip": True, "max_shift": 32}}
    images = torch.randn(args.batch_size, 3, 224, 224)
    labels = torch.arange(args.batch_size) % 1000
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; batch {args.batch_size} x 3 x 224 x "
          f"224, torchvision ResNet-18 (random weights), teddy statistics loss; {args.steps} timed steps after "
          f"{args.warmup} warm-up steps\n")
    rows = []
    for label, flags in (("bf16 autocast + channels-last", {"amp": True, "channels_last": True}),
                         ("float32", {"amp": False, "channels_last": False})):
        def run(steps):
            recipe = {**base, **flags, "iterations": steps}
            task = DistillTask(real=None, info=info, pool=pool, ipc=1, recipe=recipe, seed=0, device=device)
            optimise_synthetic(task, images, labels, statistics_loss_fn(recipe), torch.Generator().manual_seed(0),
                               desc=label)
        run(args.warmup)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run(args.steps)
        torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / args.steps
        rows.append((label, per_step * 1000, torch.cuda.max_memory_allocated() / 2 ** 30))
        for member in pool.members:  # back to the default layout for the next run
            member.to(memory_format=torch.contiguous_format)

    print("| precision | seconds per 1000 steps | peak GPU memory (GiB) | "
          + " | ".join(f"GPU-hours IPC {i}" for i in (10, 50, 100)) + " |")
    print("|---|---:|---:|" + "---:|" * 3)
    for label, per_1000, peak in rows:
        hours = [num_batches(1000, ipc, args.batch_size) * args.iterations * per_1000 / 1000 / 3600
                 for ipc in (10, 50, 100)]
        print(f"| {label} | {per_1000:.1f} | {peak:.2f} | " + " | ".join(f"{h:.0f}" for h in hours) + " |")
    print(f"\nGPU-hours per method: {num_batches(1000, 10, args.batch_size)} / {num_batches(1000, 50, args.batch_size)}"
          f" / {num_batches(1000, 100, args.batch_size)} batches x {args.iterations} steps (teddy and sre2l alike)")


if __name__ == "__main__":
    sys.exit(main())
