"""How much accuracy does storing a distilled set as uint8 PNGs cost?

What storing a distilled set as uint8 PNGs costs in accuracy: one student trained on the float
images and one on the same images quantised (teddy.distilled_set.quantise), all else equal.

Needs a finished run of the config (base model and pool members under results_dir). The float set
is re-made in memory with the config's own recipe and seeds (per-batch seeds: the same images the
distill jobs wrote); when the set's PNGs exist, the quantised tensors are checked against them.
Then, per student seed, the student is trained as rule evaluate trains it (online KD from the
base model, or hard labels, as the protocol says; the protocol's student and recipe at this IPC)
on each version and tested on the real test set. `--protocol` picks the protocol (default: the
config's first evaluate.protocols entry).

    PYTHONPATH=src .venv/bin/python benchmarks/quantisation_cost.py --configfile config/config.yaml \\
        --method teddy --ipc 10 --arch convnet --seeds 0 1 [--protocol teddy_small_kd]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--method", default="teddy")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--arch", default="convnet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--protocol", default=None, help="evaluation protocol (default: the config's first)")
    parser.add_argument("--epochs", type=int, default=None, help="override the protocol's recipe epochs (quick checks)")
    args = parser.parse_args()

    from teddy import stages
    from teddy.data import TensorImageDataset
    from teddy.datasets import dataset_info, load_split
    from teddy.distilled_set import load_set_tensors, quantise
    from teddy.machine import resolve_device
    from teddy.methods import DistillTask, get_method
    from teddy.models import model_from_spec
    from teddy.pool import load_model, member_names
    from teddy.protocols import config_protocol, student_spec
    from teddy.student_run import config_student_recipe
    from teddy.train import evaluate_accuracy, fit, targets_for

    cfg = yaml.safe_load(Path(args.configfile).read_text())
    R = Path(cfg["results_dir"])
    recipe = cfg["distill"]["methods"][args.method]
    info = dataset_info(cfg["dataset"])
    device = resolve_device(cfg.get("device", "auto"))
    real = load_split(cfg["dataset"], "train")
    members = [R / "pool" / recipe["pool"] / "members" / f"{m}.pt" for m in member_names(cfg["pools"][recipe["pool"]])] \
        if recipe.get("pool") else []
    from teddy.config import fill_defaults
    from teddy.stages.distill import distill_pool

    settings = stages.stage("distill").settings(fill_defaults(cfg), {"method": args.method, "ipc": args.ipc,
                                                                     "shard": 0})
    pool = distill_pool(settings, info, real, device, [str(m) for m in members])
    task = DistillTask(real=real, info=info, pool=pool, ipc=args.ipc, recipe=recipe,
                       seed=int(cfg["distill"].get("seed", 0)), device=device, name=args.method)
    made = get_method(recipe["method"])(task)
    order = torch.argsort(made.labels * (args.ipc + 1) + made.index_in_class)  # the PNG tree's order
    images, labels = made.images[order], made.labels[order]
    quantised = quantise(images, info.mean, info.std)
    meta_path = R / "distilled" / args.method / f"ipc{args.ipc}" / "meta.json"
    if meta_path.is_file():
        stored, stored_labels, _ = load_set_tensors(meta_path)
        same = torch.equal(stored_labels, labels) and torch.allclose(stored, quantised, atol=1e-6)
        print(f"re-made set {'equals' if same else 'DIFFERS FROM'} the stored PNGs at {meta_path}")
    step = [round(1 / (255 * s), 5) for s in info.std]
    print(f"largest pixel change from quantisation: {(images - quantised).abs().max().item():.5f} "
          f"(normalised units; one uint8 step is {step})")

    protocol = config_protocol(cfg, args.protocol)
    teacher = None if protocol["labels"] == "hard" else \
        load_model(R / "base" / cfg["base"]["arch"] / "model.pt", what="teacher (base model)")[0]
    test_set = load_split(cfg["dataset"], "test")
    student_recipe = config_student_recipe(cfg, len(labels), protocol["name"], args.ipc)
    if args.epochs:
        student_recipe["epochs"] = args.epochs
    print(f"\n{args.method} IPC {args.ipc}, student {args.arch}, protocol {protocol['name']} "
          f"({protocol['labels']} labels), {student_recipe['epochs']} epochs\n")
    print("| seed | float32 set (%) | uint8 set (%) | difference (points) |")
    print("|---:|---:|---:|---:|")
    for seed in args.seeds:
        accuracy = []
        for version in (images, quantised):
            student = model_from_spec(student_spec(cfg, protocol, args.arch), info, seed=seed)
            fit(student, TensorImageDataset(version, labels, real.class_names), student_recipe, device,
                seed=seed, targets=targets_for(teacher), desc=f"student seed {seed}")
            accuracy.append(100 * evaluate_accuracy(student, test_set, device))
        print(f"| {seed} | {accuracy[0]:.2f} | {accuracy[1]:.2f} | {accuracy[1] - accuracy[0]:+.2f} |")


if __name__ == "__main__":
    main()
