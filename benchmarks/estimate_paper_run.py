"""How long will a config's run take on this machine, before it is made?

Estimate the wall time of a config's run before making it: job counts from the config, per-job
times measured here on short slices of each job's real training loop.

Each training job is `teddy.train.fit` over the data sizes of the config (random pixels
of the dataset's shape: the cost of a step does not depend on what the images show). A short
slice of each is timed (a few epochs of a student, a few hundred batches of a whole-set run) and
scaled to the recipe's length; one evaluation of the test set is added per job. Times are CPU
seconds of one torch thread (time.process_time), so that other work on the machine during the
measurement inflates them less than wall time would; data loading and start-up are not counted. Distillation is
timed through the real methods on a random "real" set for a fraction of its iterations. The
estimate assumes `--cores N` runs N one-thread jobs at once after the base model (which takes
`threads.train_base` cores alone), with no scheduling gaps: a lower bound of the real wall time,
which also depends on what else runs on the machine.

    .venv/bin/python benchmarks/estimate_paper_run.py --config config/fashion_mnist_paper.yaml [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import config_jobs, job_counts, timed

from teddy.data import TensorImageDataset
from teddy.datasets import dataset_info
from teddy.jobs import jobs_of
from teddy.methods import get_method
from teddy.methods.base import DistillTask
from teddy.models import model_from_spec
from teddy.pool import WeakPool
from teddy.protocols import cells, config_protocol, student_spec, whole_set_recipe
from teddy.student_run import config_student_recipe
from teddy.train import evaluate_accuracy, fit, targets_for

DEVICE = torch.device("cpu")


def random_set(n: int, info, num_classes: int, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, info.channels, info.image_size, info.image_size, generator=g)
    targets = torch.arange(n) % num_classes
    return TensorImageDataset(images, targets, [str(c) for c in range(num_classes)])


def model(cfg, arch, info, spec=None):
    """`arch` with the config's arch_options, or the given spec (a protocol's student variant)."""
    torch.manual_seed(0)
    return model_from_spec(spec or {"arch": arch, **(cfg.get("arch_options") or {}).get(arch, {})}, info)


def cpu_seconds(fn) -> float:
    """CPU seconds of this process (one torch thread): what the job would take alone on a core,
    even while other work shares the machine during the measurement."""
    return timed(fn, clock=time.process_time)[1]


def train_seconds(cfg, arch, info, n_images, recipe, teacher_arch=None, slice_epochs=None, slice_images=None,
                  spec=None):
    """Seconds of `recipe` over n_images, from a timed slice (fewer epochs or fewer images)."""
    epochs = int(recipe["epochs"])
    run_images = min(n_images, slice_images or n_images)
    run_epochs = min(epochs, slice_epochs or epochs)
    data = random_set(run_images, info, info.num_classes)
    short = {**recipe, "epochs": run_epochs, "eval_every": 0}
    teacher = model(cfg, teacher_arch, info) if teacher_arch else None
    seconds = cpu_seconds(lambda: fit(model(cfg, arch, info, spec), data, short, DEVICE, seed=0,
                                targets=targets_for(teacher), desc=f"slice {arch}"))
    return seconds * (epochs / run_epochs) * (n_images / run_images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    info = dataset_info(cfg["dataset"])
    train_size = {"fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000}[cfg["dataset"]["name"]]
    train_size = int(train_size * (1 - float(cfg["dataset"].get("val_fraction", 0.1))))
    test_size = 10000
    base_arch = cfg["base"]["arch"]
    torch.set_num_threads(1)
    jobs = config_jobs(cfg)  # the workflow's DAG: each method's own IPCs and student seeds, its shards
    counts = job_counts(jobs)
    test_seconds = {a: cpu_seconds(lambda a=a: evaluate_accuracy(model(cfg, a, info), random_set(test_size, info, 10),
                                                           DEVICE)) for a in cfg["evaluate"]["students"]}
    rows = []  # (stage, jobs, seconds per job, threads)

    # measured on one thread; its `threads.train_base` threads are assumed to divide it perfectly
    base_threads = int(cfg.get("threads", {}).get("train_base", 2))
    base = train_seconds(cfg, base_arch, info, train_size, cfg["base"]["recipe"], slice_epochs=1, slice_images=10240)
    rows.append(("train_base", counts["train_base"], (base + test_seconds.get(base_arch, 5.0)) / base_threads,
                 base_threads))

    rows.append(("pool_member", counts["pool_member"], 5.0, 1))

    real = random_set(train_size // 10, info, info.num_classes)  # a tenth: enough real images per class
    for gather in jobs_of(jobs, "gather"):  # one set per (method, IPC), made by its distill shards
        name, ipc = gather["method"], gather["ipc"]
        recipe = cfg["distill"]["methods"][name]
        shards = sum(1 for j in jobs_of(jobs, "distill") if j["method"] == name and j["ipc"] == ipc)
        iterations = int(recipe.get("iterations", 1))
        short = {**recipe, "iterations": max(1, min(iterations, 20))}
        pool = WeakPool([model(cfg, base_arch, info).eval()], ["m"]) if recipe.get("pool") else None
        task = DistillTask(real=real, info=info, pool=pool, ipc=ipc, recipe=short, seed=0, device=DEVICE)
        seconds = cpu_seconds(lambda: get_method(recipe["method"])(task))
        if "iterations" in recipe:
            seconds *= iterations / short["iterations"]
        rows.append((f"distill {name} ipc{ipc}", shards, seconds / shards, 1))  # the set's time split over its shards

    evaluate = jobs_of(jobs, "evaluate")
    for arch, name in cells(cfg):
        protocol = config_protocol(cfg, name)
        teacher = base_arch if protocol["labels"] == "kd" else None
        for ipc in sorted({j["ipc"] for j in evaluate}):
            runs = sum(1 for j in evaluate if (j["arch"], j["protocol"], j["ipc"]) == (arch, name, ipc))
            if not runs:
                continue
            n = ipc * info.num_classes
            s = train_seconds(cfg, arch, info, n, config_student_recipe(cfg, n, name, ipc), teacher_arch=teacher,
                              slice_epochs=20, spec=student_spec(cfg, protocol, arch))
            rows.append((f"evaluate {arch} {name} ipc{ipc}", runs, s + test_seconds[arch], 1))

    ceiling = jobs_of(jobs, "ceiling")
    if ceiling:
        for arch, name in cells(cfg):
            protocol = config_protocol(cfg, name)
            s = train_seconds(cfg, arch, info, train_size, whole_set_recipe(protocol, cfg["ceiling"].get("epochs")),
                              teacher_arch=base_arch if protocol["labels"] == "kd" else None,
                              slice_epochs=1, slice_images=5120, spec=student_spec(cfg, protocol, arch))
            rows.append((f"ceiling {arch} {name}", sum(1 for j in ceiling if (j["arch"], j["protocol"]) == (arch, name)),
                         s + test_seconds[arch], 1))

    print(f"config: {args.config}; {args.cores} cores; per-job CPU seconds measured on this machine with one "
          f"thread (train_base divided by its {rows[0][3]} threads); load average during the run: "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| jobs | stage | seconds per job | job-seconds |\n|---:|:---|---:|---:|")
    for stage, count, seconds, _ in rows:
        print(f"| {count} | {stage} | {seconds:.1f} | {count * seconds:.0f} |")
    rest = sum(count * seconds for stage, count, seconds, _ in rows[1:])
    wall = rows[0][1] * rows[0][2] + rest / args.cores
    total_jobs = sum(count for _, count, _, _ in rows)
    print(f"\n{total_jobs} jobs; estimated wall time (lower bound): {wall / 3600:.2f} h "
          f"(train_base {rows[0][2] / 60:.1f} min, then {rest / 3600:.2f} job-hours over {args.cores} cores)")


if __name__ == "__main__":
    main()
