"""Does the whole workflow run on a GPU, through every CUDA code path?

The real workflow on a GPU: the default DAG on a small generated Fashion-MNIST-format set, with
device cuda, bf16 autocast and channels-last switched on in every recipe (the students' through
evaluate.amp / channels_last; each evaluation protocol copied to the workdir with 20 epochs), run
by Snakemake as a user would. It proves the CUDA code paths (placement, pinned memory, autocast, channels-last,
the jobs' peak-GPU-memory lines) end to end; the accuracies of a 3-epoch run on random-pattern
images mean nothing.

    PYTHONPATH=src python benchmarks/gpu_tiny_pipeline.py [--workdir /tmp/gpu_tiny]

Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import REPO, timed
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/gpu_tiny")
    ap.add_argument("--cores", type=int, default=4)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing run (this checks the workflow's GPU paths)")
        return 0
    from fixtures import write_fashion_mnist

    from teddy.protocols import config_protocol, whole_set_recipe

    work = Path(args.workdir)
    data = write_fashion_mnist(work / "data", n_train=2000, n_test=500)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["dataset"]["root"] = str(data)
    cfg["results_dir"] = "results/gpu_tiny"
    cfg["device"] = "cuda"
    cfg["base"]["recipe"].update(epochs=3, amp=True, channels_last=True)
    for recipe in cfg["distill"]["methods"].values():
        if recipe["method"] == "teddy":
            recipe.update(iterations=50, amp=True)
    cfg["evaluate"].update(amp=True, channels_last=True)
    # each protocol of the config, shortened, in a protocols_dir of the workdir
    short = work / "config" / "protocols"
    short.mkdir(parents=True, exist_ok=True)
    for name in cfg["evaluate"]["protocols"]:
        protocol = config_protocol(cfg, name)
        protocol["recipe"] = whole_set_recipe(protocol, 20)  # 20 epochs, step milestones in proportion
        (short / f"{name}.yaml").write_text(yaml.safe_dump(protocol))
    cfg["protocols_dir"] = str(short.resolve())
    (work / "config").mkdir(parents=True, exist_ok=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
               "--directory", str(work), "--cores", str(args.cores)]
    proc, seconds = timed(lambda: subprocess.run(command, capture_output=True, text=True))
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; snakemake exit {proc.returncode} "
          f"after {seconds:.0f} s")
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        return 1
    results = work / "results" / "gpu_tiny"
    print((results / "tables" / "accuracy.md").read_text()[:3000])
    for log in sorted((results / "logs").rglob("*.log")):
        peaks = [line for line in log.read_text().splitlines() if "GPU memory" in line]
        if peaks:
            print(f"{log.relative_to(results)}: {peaks[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
