"""How close does a distillation step on stacked synthetic batches come to its ceiling?

Distillation step throughput against its own ceiling, for stacked synthetic batches.

For each stack G (`--stacks`) and pool size P (`--members`): image-steps per second of the
pipeline's loop (`teddy.methods.base.optimise_stack`: G batches of `--batch` images, augmentation,
per-batch pool draws, one forward per distinct member drawn, teddy's statistics loss, Adam,
cosine schedule, clipping, the NaN guard), beside the bare forward + backward-to-input of the same
frozen network on random tensors at the same total batch (G x batch, one forward) on the same
device: what no pipeline can beat. Reported: both rates, their ratio, peak GPU memory (CUDA), and
the projected device-hours of ImageNet-1K IPC 10 / 50 / 100 for each method of
config/imagenet1k.yaml with an `iterations` key (1000 classes; its batch size, iterations and
pool size), at the measured rate of that pool size and each G. The projection only means
something for the ImageNet setting (224 px ResNet-18 on the GPU): on CPU with small sizes it
is printed for the shape of the table only.

On a GPU (the setting of the issue's targets):

    PYTHONPATH=src .venv/bin/python benchmarks/distill_throughput.py --device cuda --arch resnet18 \\
        --image-size 224 --channels 3 --classes 1000 --batch 100 --stacks 1 2 4 8 16 --members 1 3 \\
        --steps 30 --warmup 5 --amp --channels-last

On CPU, small (what docs/gpu_loops.md records from this machine):

    PYTHONPATH=src .venv/bin/python benchmarks/distill_throughput.py --device cpu --arch convnet \\
        --image-size 28 --channels 1 --classes 10 --batch 100 --stacks 1 2 4 8 --members 1 2 --steps 20

`--demo`: instead, the whole demo-sized teddy distillation (config/config.yaml: real
Fashion-MNIST, two ConvNet-3 width-32 members, IPC 10 = one batch of 100, 300 iterations) through
`get_method("teddy")`, wall seconds; `--stack G` sets the recipe key. It uses only APIs that
existed before stacking, so `PYTHONPATH=<an older src>` times the code before the change on the
same machine.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, cpu_name, sync, timed


def members(args, count: int, device: torch.device) -> list[torch.nn.Module]:
    from teddy.models import build_model

    out = []
    for i in range(count):
        torch.manual_seed(i)
        options = {"depth": 3, "width": 32} if args.arch == "convnet" else {}
        model = build_model(args.arch, args.classes, args.channels, args.image_size, **options).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        out.append(model)
    return out


def recipe_for(args, iterations: int) -> dict:
    # config/imagenet1k.yaml's teddy recipe, the shift scaled with the image size (32 px at 224)
    return {"method": "teddy", "matching": "statistics", "iterations": iterations, "batch_size": args.batch,
            "lr": 0.25, "alpha": 0.01, "first_bn_weight": 10.0, "ce_weight": 1.0, "log_every": 200,
            "checkpoint_every": 10 ** 9, "amp": args.amp, "channels_last": args.channels_last,
            "compile": args.compile,
            "augment": {"crop": True, "crop_scale": [0.08, 1.0], "flip": True,
                        "max_shift": max(1, round(args.image_size * 32 / 224))}}


def pipeline_rate(args, pool, G: int, device: torch.device) -> tuple[float, float | None]:
    """Image-steps per second of the pipeline's loop, G stacked batches; peak GPU memory (GiB)."""
    from teddy.data import DatasetInfo
    from teddy.methods.base import BatchStart, DistillTask, optimise_stack
    from teddy.methods.teddy import statistics_loss_fn

    info = DatasetInfo("bench", args.classes, args.channels, args.image_size, (0.5,) * args.channels,
                       (0.25,) * args.channels)

    def run(iterations):
        recipe = recipe_for(args, iterations)
        task = DistillTask(real=None, info=info, pool=pool, ipc=1, recipe=recipe, seed=0, device=device)
        batches = [BatchStart(k, torch.randn(args.batch, args.channels, args.image_size, args.image_size),
                              torch.arange(args.batch) % args.classes, torch.Generator().manual_seed(k))
                   for k in range(G)]
        optimise_stack(task, batches, statistics_loss_fn(recipe), desc=f"G={G} P={len(pool)}")

    run(args.warmup)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, seconds = timed(lambda: run(args.steps), device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return G * args.batch * args.steps / seconds, peak


def ceiling_rate(args, model, total: int, device: torch.device) -> tuple[float, float | None]:
    """Bare forward + backward to the input of one frozen network at batch `total`."""
    from teddy.recipes import autocast_for

    x = torch.randn(total, args.channels, args.image_size, args.image_size, device=device)
    if args.channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    net = torch.compile(model, dynamic=True) if args.compile else model

    def step():
        with autocast_for(device, args.amp):
            out = net(x)
        out.float().sum().backward()
        x.grad = None

    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, seconds = timed(lambda: [step() for _ in range(args.steps)], device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return total * args.steps / seconds, peak


def imagenet_methods() -> list[tuple[str, int, int, int]]:
    """(method name, pool size, batch_size, iterations) of config/imagenet1k.yaml's optimising methods."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "imagenet1k.yaml").read_text())
    out = []
    for name, recipe in cfg["distill"]["methods"].items():
        if "iterations" not in recipe:
            continue
        pool = cfg["pools"][recipe["pool"]]
        size = {"prior": len(pool.get("epochs") or pool.get("target_accuracies") or []),
                "post": len(pool.get("ratios") or []), "single": 1}[pool["generator"]]
        out.append((name, size, int(recipe.get("batch_size", 100)), int(recipe["iterations"])))
    return out


def throughput(args) -> None:
    from teddy.pool import WeakPool
    from teddy.shards import num_batches

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run with --device cpu for the CPU figures)")
        return
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {args.threads} thread(s)"
    print(f"{datetime.date.today()}, {name}, torch {torch.__version__}; {args.arch} at {args.image_size} px, "
          f"{args.channels} channel(s), {args.classes} classes, batch {args.batch}; {args.steps} timed steps after "
          f"{args.warmup} warm-up; amp {args.amp}, channels-last {args.channels_last}, compile {args.compile}\n")
    pools = {p: WeakPool(members(args, p, device), [f"m{i}" for i in range(p)]) for p in args.members}
    rates = {}
    print("| pool members | G | total batch | pipeline image-steps/s | ceiling image-steps/s | ratio | "
          "peak GPU GiB (pipeline / ceiling) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    ceilings = {}
    for p, pool in pools.items():
        for G in args.stacks:
            try:
                rate, peak = pipeline_rate(args, pool, G, device)
                if G not in ceilings:
                    ceilings[G] = ceiling_rate(args, pool.members[0], G * args.batch, device)
            except torch.OutOfMemoryError:
                print(f"| {p} | {G} | {G * args.batch} | out of memory | | | |", flush=True)
                torch.cuda.empty_cache()
                continue
            ceiling, cpeak = ceilings[G]
            rates[(p, G)] = rate
            mem = "n/a (CPU)" if peak is None else f"{peak:.2f} / {cpeak:.2f}"
            print(f"| {p} | {G} | {G * args.batch} | {rate:,.0f} | {ceiling:,.0f} | {rate / ceiling:.2f} | {mem} |",
                  flush=True)
    unit = "GPU-hours" if device.type == "cuda" else "CPU-hours (at these sizes: the table's shape only)"
    print(f"\nProjected {unit} of ImageNet-1K (1000 classes) per method, at the rate measured for its pool size:")
    print("| method | pool members | iterations | G | IPC 10 | IPC 50 | IPC 100 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, p, batch_size, iterations in imagenet_methods():
        p_used = p if p in pools else min(pools, key=lambda q: abs(q - p))
        for G in [g for g in args.stacks if (p_used, g) in rates]:
            hours = [num_batches(1000, ipc, batch_size) * batch_size * iterations / rates[(p_used, G)] / 3600
                     for ipc in (10, 50, 100)]
            note = "" if p_used == p else f" (measured with {p_used})"
            print(f"| {method} | {p}{note} | {iterations} | {G} | " + " | ".join(f"{h:,.1f}" for h in hours) + " |")


def demo(args) -> None:
    """The demo-sized teddy distillation through get_method, wall seconds."""
    import yaml

    from teddy.datasets import dataset_info, load_split
    from teddy.methods import DistillTask, get_method
    from teddy.models import build_model
    from teddy.pool import WeakPool

    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    info = dataset_info(cfg["dataset"])
    real = load_split(cfg["dataset"], "train")
    pool_members = []
    for i in range(2):
        torch.manual_seed(i)
        pool_members.append(build_model("convnet", info.num_classes, info.channels, info.image_size,
                                        **cfg["arch_options"]["convnet"]))
    recipe = dict(cfg["distill"]["methods"]["teddy"])
    if args.stack is not None:
        recipe["stack"] = args.stack
    times, cpu = [], []
    for _ in range(args.repeats):
        pool = WeakPool(pool_members, ["m0", "m1"])
        task = DistillTask(real=real, info=info, pool=pool, ipc=10, recipe=recipe, seed=0,
                           device=torch.device("cpu"), name="teddy")
        t0, c0 = time.perf_counter(), time.process_time()
        result = get_method("teddy")(task)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # process CPU time as well: on a machine shared with other jobs, wall time mostly measures them
    print(f"demo teddy IPC 10 ({len(result.labels)} images, {recipe['iterations']} iterations), "
          f"{args.threads} thread(s): wall seconds {' '.join(f'{t:.2f}' for t in times)}; "
          f"process CPU seconds {' '.join(f'{t:.2f}' for t in cpu)}; best wall {min(times):.2f}, best CPU {min(cpu):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="images per synthetic batch")
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 3],
                        help="pool sizes (ImageNet-1K: sre2l 1, teddy 3)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the members")
    parser.add_argument("--demo", action="store_true", help="time the demo-sized teddy distillation instead")
    parser.add_argument("--stack", type=int, default=None, help="--demo: the recipe's stack")
    parser.add_argument("--repeats", type=int, default=1, help="--demo: runs")
    args = parser.parse_args()
    demo(args) if args.demo else throughput(args)


if __name__ == "__main__":
    sys.exit(main())
