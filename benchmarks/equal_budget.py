"""Which method reaches the best accuracy for the same distillation time?

Accuracy each method reaches on Fashion-MNIST at IPC 10 for the same distillation wall-clock
budget (default 60 s per method on 1 thread).

Methods: teddy (statistics), teddy (gradient), sre2l, bilevel (K = 10), random, herding. For an
optimising method, a 2-iteration probe measures its setup time and time per iteration; the run
then gets as many iterations as fit in the budget (cosine schedule over that count). Selection
methods take what they take. One ConvNet student per method (the student and recipe of
`--protocol`, default the config's first evaluate.protocols entry; online KD from the base model
for a KD protocol; student seed 0) is scored on the real test set.

Models: the base model and prior-pool members of a finished default run (results/fashion_mnist)
when present; otherwise a quick base model (2 epochs) is trained here and its epoch-1 snapshot
is the pool. Writes docs/equal_budget.md (its measured part; a rerun replaces
the hand-written reading below the table).

    .venv/bin/python benchmarks/equal_budget.py [--budget 60] [--threads 1] [--protocol NAME]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, timed

from teddy.data import TensorImageDataset
from teddy.datasets import dataset_info, load_split
from teddy.methods import DistillTask, get_method
from teddy.models import model_from_spec
from teddy.pool import WeakPool, load_model, member_names
from teddy.protocols import config_protocol, student_spec
from teddy.stages import build
from teddy.student_run import config_student_recipe
from teddy.train import evaluate_accuracy, fit, targets_for

CPU = torch.device("cpu")


def base_and_pool(cfg, real):
    """(base model, prior pool members, where they came from)."""
    results = REPO / cfg["results_dir"]
    base_path = results / "base" / cfg["base"]["arch"] / "model.pt"
    member_paths = [results / "pool" / "prior" / "members" / f"{m}.pt" for m in member_names(cfg["pools"]["prior"])]
    if base_path.exists() and all(p.exists() for p in member_paths):
        members = [load_model(p)[0] for p in member_paths]
        return load_model(base_path)[0], WeakPool(members, [p.stem for p in member_paths]), f"{results}"
    snapshots = {}
    model = build(cfg, cfg["base"]["arch"], seed=0)
    recipe = {**cfg["base"]["recipe"], "epochs": 2}
    fit(model, real, recipe, CPU, seed=0, desc="quick base",
        on_epoch_end=lambda epoch, m, metrics: snapshots.update({epoch: copy.deepcopy(m).eval()}))
    return model.eval(), WeakPool([snapshots[1]], ["epoch1"]), "trained here (2 epochs; pool: epoch-1 snapshot)"


def run_within_budget(method, task_for, budget):
    """Probe the method's setup and time per iteration, then run as many iterations as fit in
    `budget` seconds (setup included). The probe is a 1-iteration warm-up (one-time kernel and
    allocator costs) and then a 3-iteration run; neither is charged to the budget."""
    if method in ("random", "herding"):
        return *timed(lambda: get_method(method)(task_for({}))), 0
    get_method(method)(task_for({"iterations": 1}))
    probe, probe_seconds = timed(lambda: get_method(method)(task_for({"iterations": 3})))
    optimise_seconds = sum(b["optimise_seconds"] for b in probe.log["batches"])  # per-batch harness
    per_iteration = optimise_seconds / 3
    setup = probe_seconds - optimise_seconds
    iterations = max(1, int((budget - setup) / per_iteration))
    return *timed(lambda: get_method(method)(task_for({"iterations": iterations}))), iterations


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--budget", type=float, default=60.0, help="distillation seconds per method")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--protocol", default=None,
                    help="evaluation protocol of the students (default: the config's first)")
    ap.add_argument("--out", default=str(REPO / "docs" / "equal_budget.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start, load_at_start = time.perf_counter(), os.getloadavg()[0]
    cfg = yaml.safe_load(Path(args.config).read_text())
    info = dataset_info(cfg["dataset"])
    protocol = config_protocol(cfg, args.protocol)
    real, test_set = load_split(cfg["dataset"], "train"), load_split(cfg["dataset"], "test")
    base, prior, models_from = base_and_pool(cfg, real)
    single = WeakPool([base], ["base"])
    teddy_recipe = {k: v for k, v in cfg["distill"]["methods"]["teddy"].items() if k not in ("pool", "iterations")}
    width = (cfg.get("arch_options") or {}).get("convnet", {})
    # (label, method, pool, recipe): teddy's rows use the config's tuned recipe; the others their
    # own defaults, with the same pixel lr and augmentation where the method has no published one
    candidates = [
        ("teddy statistics", "teddy", prior, teddy_recipe),
        ("teddy gradient", "teddy", prior, {**teddy_recipe, "matching": "gradient"}),
        ("sre2l (published ImageNet recipe)", "sre2l", single, {"method": "sre2l"}),
        ("bilevel K=10", "bilevel", None, {"method": "bilevel", "unroll_steps": 10, "inner_lr": 0.01,
                                           "inner_arch": "convnet", "inner_arch_options": width,
                                           "lr": teddy_recipe["lr"], "augment": teddy_recipe["augment"]}),
        ("random", "random", None, {"method": "random"}),
        ("herding", "herding", single, {"method": "herding"}),
    ]
    rows = []
    for label, method, pool, recipe in candidates:
        def task_for(extra, pool=pool, recipe=recipe):
            return DistillTask(real, info, pool, args.ipc, {**recipe, **extra}, seed=0, device=CPU)

        result, seconds, iterations = run_within_budget(method, task_for, args.budget)
        train_set = TensorImageDataset(result.images, result.labels, real.class_names)
        student = model_from_spec(student_spec(cfg, protocol, "convnet"), info, seed=0)
        fit(student, train_set, config_student_recipe(cfg, len(train_set), protocol["name"], args.ipc), CPU, seed=0,
            targets=targets_for(base if protocol["labels"] == "kd" else None),
            desc=f"student {label}")
        accuracy = evaluate_accuracy(student, test_set, CPU)
        rows.append({"method": label, "iterations": iterations, "distill_s": seconds, "test_acc": 100 * accuracy})
        print(rows[-1], flush=True)

    lines = ["| method | distillation iterations | distillation s | student test acc (%) |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['iterations'] or '-'} | {r['distill_s']:.1f} | {r['test_acc']:.2f} |"
              for r in rows]
    table = "\n".join(lines)
    print(table)
    header = (f"Measured {datetime.date.today().isoformat()} by `benchmarks/equal_budget.py` (one run, "
              f"{(time.perf_counter() - start) / 60:.1f} min in all), {platform.machine()}, torch {torch.__version__}, "
              f"CPU, {args.threads} thread(s), budget {args.budget:g} s of distillation per method, IPC {args.ipc}, "
              f"real Fashion-MNIST. Base model and pool: {models_from}. Student: ConvNet-3 "
              f"under protocol {protocol['name']} ({protocol['labels']} labels; KD from the base model), one "
              f"seed (0). Machine load (1-minute load average) at start / end: {load_at_start:.2f} / "
              f"{os.getloadavg()[0]:.2f}.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"# Accuracy for the same distillation budget\n\n{header}\n\n{table}\n")
    print(f"written to {args.out} (the reading of the figures is added by hand below the table)")


if __name__ == "__main__":
    main()
