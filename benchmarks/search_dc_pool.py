"""Which pool should dc_pool use (kind and size), chosen on the validation split?

Distils the config's dataset at `--ipc` with the `dc_pool` method (DC's recipe, a pool built once,
teddy.methods.dc_pool) for each candidate `kind:size[:prior_steps]`, stores nothing, quantises the
set to 8-bit as the workflow stores it, trains `--seeds` students under the `dc` protocol (its
student, recipe and hard labels) and scores them on the validation split held out of the
training set (never the test set). A random real subset of the same size is scored the same way,
and so is every finished set named by `--sets` (a meta.json, e.g. the `dc` reproduction's sets).
Prints a Markdown table with the distillation wall and CPU seconds, and writes it to --out.

    .venv/bin/python benchmarks/search_dc_pool.py --config config/dc_reproduction.yaml \\
        --candidates random:4 random:16 prior:8:50 --seeds 0 1 2 --threads 2 \\
        --sets results/dc_reproduction/fashion_mnist/distilled/dc/ipc1/meta.json --out <page>.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, cpu_name, print_page, table_head, timed

from teddy.data import TensorImageDataset
from teddy.datasets import dataset_info, load_split
from teddy.distilled_set import load_set_tensors, quantise
from teddy.methods import DistillTask, full_recipe, get_method
from teddy.models import model_from_spec
from teddy.protocols import config_protocol, student_spec
from teddy.student_run import config_student_recipe
from teddy.train import evaluate_accuracy, fit, targets_for


def parse_candidate(text: str) -> dict:
    """`kind:size[:prior_steps]` -> the dc_pool recipe keys it sets."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("random", "prior"):
        raise SystemExit(f"candidate '{text}': write kind:size or prior:size:steps (kind random or prior)")
    out = {"pool_kind": parts[0], "pool_size": int(parts[1])}
    if len(parts) == 3:
        out["prior_steps"] = int(parts[2])
    return out


def val_accuracies(cfg, protocol, images, labels, class_names, info, val_set, seeds, device) -> list[float]:
    """One dc-protocol student per seed on the set, each scored on the validation split (%)."""
    recipe = config_student_recipe(cfg, len(labels), protocol["name"], int(len(labels) // info.num_classes))
    out = []
    for seed in seeds:
        student = model_from_spec(student_spec(cfg, protocol, "convnet"), info, seed=seed)
        fit(student, TensorImageDataset(images, labels, class_names), recipe, device, seed=seed,
            targets=targets_for(None), desc=f"student seed {seed}")
        out.append(100 * evaluate_accuracy(student, val_set, device))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "config" / "dc_reproduction.yaml"))
    ap.add_argument("--candidates", nargs="*", default=["random:4", "random:16", "prior:8:50"])
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="distillation seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    ap.add_argument("--sets", nargs="*", default=[], help="meta.json of finished sets to score the same way")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = yaml.safe_load(Path(args.config).read_text())
    info, device = dataset_info(cfg["dataset"]), torch.device("cpu")
    real, val_set = load_split(cfg["dataset"], "train"), load_split(cfg["dataset"], "val")
    protocol = config_protocol(cfg, "dc")
    rows = []

    def score(name, images, labels, wall, cpu):
        images = quantise(images, info.mean, info.std)
        acc = val_accuracies(cfg, protocol, images, labels, real.class_names, info, val_set, args.seeds, device)
        rows.append((name, statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0, wall, cpu))
        print(f"{name}: val {rows[-1][1]:.2f} +- {rows[-1][2]:.2f}  ({wall:.0f} s wall)", file=sys.stderr)

    for text in args.candidates:
        recipe = full_recipe({"method": "dc_pool", "iterations": args.iterations, **parse_candidate(text)})
        task = DistillTask(real=real, info=info, pool=None, ipc=args.ipc, recipe=recipe, seed=args.seed,
                           device=device, name="dc_pool")
        cpu0 = time.process_time()
        made, wall = timed(lambda: get_method("dc_pool")(task))
        score(f"dc_pool {text}", made.images, made.labels, wall, time.process_time() - cpu0)
    task = DistillTask(real=real, info=info, pool=None, ipc=args.ipc, recipe=full_recipe({"method": "random"}),
                       seed=args.seed, device=device, name="random")
    made = get_method("random")(task)
    score("random real subset", made.images, made.labels, 0.0, 0.0)
    for meta in args.sets:
        images, labels, _ = load_set_tensors(meta)
        score(f"stored set {Path(meta).parent.parent.name}", images, labels, float("nan"), float("nan"))

    lines = [f"Measured {datetime.date.today()} on {cpu_name()}, {args.threads} thread(s), torch "
             f"{torch.__version__}: IPC {args.ipc}, {args.iterations} iterations, distillation seed {args.seed}, "
             f"students under `dc` (seeds {' '.join(map(str, args.seeds))}) scored on the "
             f"{len(val_set)}-image validation split.", "",
             *table_head(["set", "val acc (%)", "std", "distill wall (s)", "distill CPU (s)"])]
    lines += [f"| {n} | {m:.2f} | {s:.2f} | {w:.0f} | {c:.0f} |" for n, m, s, w, c in rows]
    print_page("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
