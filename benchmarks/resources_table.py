"""What does a cluster run ask for, job by job, and how many GPU-hours in all?

Each job of the workflow's own job list (teddy.jobs.job_list) with what its stage's resources ask
on the first attempt, and the expected GPU-hours (runtime x GPUs; the cost model's runtime
includes its 1.5x margin and 10 min per job).

    PYTHONPATH=src .venv/bin/python benchmarks/resources_table.py config/imagenet1k.yaml config/tiny_imagenet.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import load_config_file, table_head  # noqa: E402

from teddy.cpus import cpu_split  # noqa: E402
from teddy.jobs import job_list  # noqa: E402
from teddy.machine import machine_from_config  # noqa: E402
from teddy.stages import stage  # noqa: E402

# wildcards whose jobs ask for the same resources: one row per rule and the other wildcards
SAME_RESOURCES = ("shard", "seed", "member")


def jobs(cfg: dict):
    """(rule, wildcards, count) of every job of the config's DAG (teddy.jobs.job_list), jobs that
    differ only in a shard, seed or pool member counted on one row (its first job's wildcards)."""
    rows: dict[tuple, list] = {}
    for job in job_list(cfg):
        key = (job.rule, tuple((k, v) for k, v in job.wildcards if k not in SAME_RESOURCES))
        rows.setdefault(key, [job.rule, job.wildcard_dict, 0])[2] += 1
    yield from (tuple(row) for row in rows.values())


def threads(cfg: dict, rule: str) -> int:
    return int(cfg["threads"].get(rule, 2 if rule in ("train_base", "train_prior") else 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=["config/imagenet1k.yaml", "config/tiny_imagenet.yaml"])
    for path in parser.parse_args().configs:
        cfg = load_config_file(path)
        machine = machine_from_config(cfg)
        print(f"\n{path} (dataset {cfg['dataset']['name']}, gpus_per_job {cfg['gpus_per_job']})")
        print("\n".join(table_head(["job", "wildcards", "jobs", "mem_mb", "runtime (min)", "cpus_per_task", "GPUs",
                                     "GPU-hours (all jobs)"])))
        total, by_rule, gpu_jobs, largest = 0.0, {}, 0, None
        for rule, wildcards, count in jobs(cfg):
            mod = stage(rule)
            res = mod.resources(mod.settings(cfg, wildcards), 1, machine)
            hours = count * res["runtime"] * res["gpu"] / 60
            total += hours
            by_rule[rule] = by_rule.get(rule, 0.0) + hours
            gpu_jobs += count if res["gpu"] else 0
            if largest is None or res["runtime"] > largest[1]["runtime"]:
                largest = (rule, res, wildcards)
            named = " ".join(f"{k}={v}" for k, v in wildcards.items())
            cpus = sum(cpu_split(threads(cfg, rule), res["workers"], res["gpu"], cfg["cpus_per_gpu"]))
            print(f"| {rule} | {named} | {count} | {res['mem_mb']} | {res['runtime']} | "
                  f"{cpus} | {res['gpu']} | {hours:.1f} |")
        print(f"total: {total:.0f} GPU-hours (requested upper bounds)")
        print("by rule: " + ", ".join(f"{rule} {h:.0f}" for rule, h in sorted(by_rule.items(), key=lambda kv: -kv[1])
                                      if h >= 0.5) + f"; {gpu_jobs} jobs ask for a GPU")
        rule, res, wildcards = largest
        print(f"longest job: {rule} ({' '.join(f'{k}={v}' for k, v in wildcards.items() if k != 'seed')}), "
              f"{res['runtime']} min, {res['mem_mb'] / 1000:.0f} GB")


if __name__ == "__main__":
    main()
