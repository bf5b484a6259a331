"""Which teddy settings should the demo use, chosen on a validation split?

Choose the default teddy settings of config/config.yaml by a small search on a validation
split held out of the training set (never the test set).

Reuses the base model and prior snapshots of a finished run of --config (default: the demo's,
results/fashion_mnist), distills IPC 10 with each candidate, trains a ConvNet student with online
KD from the base model under the recipe of `--protocol` (default: the config's first
evaluate.protocols entry), and scores it on the validation split. Prints a table and writes --out.

    .venv/bin/python benchmarks/search_teddy_defaults.py [--threads 1] [--seeds 0 1]
    .venv/bin/python benchmarks/search_teddy_defaults.py --config config/fashion_mnist_paper.yaml \
        --pools 1,2 1,2,3 --inits real noise --iterations 300 1000 --out <page>.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, timed

from teddy.data import TensorImageDataset
from teddy.datasets import dataset_info, load_split
from teddy.methods import DistillTask, get_method
from teddy.pool import WeakPool, load_model
from teddy.protocols import config_protocol
from teddy.stages import build
from teddy.train import evaluate_accuracy, fit, targets_for



def student_val_accuracy(cfg, images, labels, teacher, val_set, seed, recipe):
    train_set = TensorImageDataset(images, labels, [])
    recipe = {**recipe, "batch_size": min(int(recipe["batch_size"]), len(train_set))}
    student = build(cfg, "convnet", seed=seed)
    fit(student, train_set, recipe, torch.device("cpu"), seed=seed, targets=targets_for(teacher), desc="student")
    return evaluate_accuracy(student, val_set, torch.device("cpu"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--protocol", default=None, help="evaluation protocol whose recipe trains the students "
                                                     "(default: the config's first)")
    ap.add_argument("--pools", nargs="+", default=["1,2", "3,4,5", "base"],
                    help="snapshot epochs per candidate pool, comma-separated; 'base' = the single strong model")
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.002, 0.005])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    ap.add_argument("--ce-weights", type=float, nargs="+", default=[1.0])
    ap.add_argument("--crops", nargs="+", default=["on"], choices=["on", "off"],
                    help="random resized crop in the distillation augmentation")
    ap.add_argument("--inits", nargs="+", default=["real"], choices=["real", "noise"],
                    help="initialise the images from real ones or from noise (the paper's regime)")
    ap.add_argument("--iterations", type=int, nargs="+", default=[None],
                    help="optimisation steps per batch (default: the config's)")
    ap.add_argument("--out", default=str(REPO / "docs" / "search_teddy_defaults.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    R = REPO / cfg["results_dir"]
    info = dataset_info(cfg["dataset"])
    real, val_set = load_split(cfg["dataset"], "train"), load_split(cfg["dataset"], "val")
    teacher, _ = load_model(R / "base" / cfg["base"]["arch"] / "model.pt")
    snapshots = {int(p.stem[5:]): load_model(p)[0] for p in sorted((R / "base/convnet/snapshots").glob("epoch*.pt"))}
    protocol = config_protocol(cfg, args.protocol)
    eval_recipe = protocol["recipe"]
    base_recipe = {k: v for k, v in cfg["distill"]["methods"]["teddy"].items() if k != "pool"}

    pools = {p: (None if p == "base" else [int(e) for e in p.split(",")]) for p in args.pools}
    grid = [{"pool": p, "lr": lr, "alpha": a, "ce_weight": ce, "crop": c, "init": i,
             "iterations": it or base_recipe["iterations"]}
            for p, lr, a, ce, c, i, it in itertools.product(pools, args.lrs, args.alphas, args.ce_weights, args.crops,
                                                            args.inits, args.iterations)]

    rows = []
    random_task = DistillTask(real, info, None, args.ipc, {"method": "random"}, seed=0)
    rnd = get_method("random")(random_task)
    accs = [student_val_accuracy(cfg, rnd.images, rnd.labels, teacher, val_set, s, eval_recipe) for s in args.seeds]
    rows.append({"candidate": "random real subset", "val_mean": 100 * sum(accs) / len(accs),
                 "val_min": 100 * min(accs), "distill_s": 0.0})
    print(rows[-1], flush=True)
    for cand in grid:
        members = [teacher] if pools[cand["pool"]] is None else [snapshots[e] for e in pools[cand["pool"]]]
        pool = WeakPool([m for m in members], [str(e) for e in (pools[cand["pool"]] or ["base"])])
        augment = {**base_recipe["augment"], "crop": cand["crop"] == "on"}
        recipe = {**base_recipe, "lr": cand["lr"], "alpha": cand["alpha"], "ce_weight": cand["ce_weight"],
                  "init": cand["init"], "iterations": cand["iterations"], "augment": augment, "log_every": 10_000}
        task = DistillTask(real, info, pool, args.ipc, recipe, seed=0)
        out, seconds = timed(lambda: get_method("teddy")(task))
        accs = [student_val_accuracy(cfg, out.images, out.labels, teacher, val_set, s, eval_recipe) for s in args.seeds]
        pool_label = "single base model" if pools[cand["pool"]] is None else f"snapshots of epochs {cand['pool']}"
        rows.append({"candidate": f"teddy, {pool_label}, lr={cand['lr']}, alpha={cand['alpha']}, "
                                  f"ce_weight={cand['ce_weight']}, crop {cand['crop']}, "
                                  f"{cand['init']} init, {cand['iterations']} iterations",
                     "val_mean": 100 * sum(accs) / len(accs), "val_min": 100 * min(accs), "distill_s": seconds})
        print(rows[-1], flush=True)

    table = pd.DataFrame(rows).round(2)
    best = table.iloc[1:].sort_values("val_mean", ascending=False).iloc[0]
    text = [
        "# Search for the default teddy settings (validation split)", "",
        f"Run {datetime.date.today()} on {platform.machine()} ({torch.get_num_threads()} thread(s)), torch "
        f"{torch.__version__}, by `benchmarks/search_teddy_defaults.py`.", "",
        f"IPC {args.ipc}; student: convnet with online KD from the base model, the recipe of protocol "
        f"{protocol['name']} with {os.path.relpath(args.config, REPO)}; scored on the "
        f"{len(val_set)}-image validation split held out of the training set (the test set is never used); "
        f"seeds {args.seeds}.", "",
        table.to_markdown(index=False), "",
        f"Best teddy candidate: **{best['candidate']}** ({best['val_mean']:.2f}% vs random "
        f"{rows[0]['val_mean']:.2f}%).", ""]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
