"""What a cluster run asks for, job by job, from the formulas of teddy.resources (first attempt),
with the expected GPU-hours (runtime x GPUs, the formula's runtime includes its 1.5x margin
and 10 min per job).

    PYTHONPATH=src .venv/bin/python benchmarks/resources_table.py config/imagenet1k.yaml config/tiny_imagenet.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from teddy import resources as res
from teddy.pool import member_names
from teddy.shards import shard_count


def jobs(cfg: dict):
    """(rule, ipc, arch, count) of every job of the config's DAG that asks for resources."""
    ev = cfg["evaluate"]
    labels = ev.get("labels", "online_kd")
    labels = [labels] if isinstance(labels, str) else labels
    methods, seeds = cfg["distill"]["methods"], ev["seeds"]
    pools = {r["pool"] for r in methods.values() if r.get("pool")}
    yield "train_base", 1, cfg["base"]["arch"], 1
    own_runs = sum(1 for p in pools if cfg["pools"][p].get("recipe"))
    if own_runs:
        yield "train_prior", 1, cfg["base"]["arch"], own_runs
    yield "pool_member", 1, None, sum(len(member_names(cfg["pools"][p])) for p in pools)
    for ipc in cfg["distill"]["ipc"]:
        yield "distill", ipc, None, sum(shard_count(cfg, m, ipc) for m in methods)  # one job per shard
        yield "gather", ipc, None, len(methods)
        if "stored" in labels:
            yield "relabel", ipc, None, len(methods) * len(seeds)
        for arch in ev["students"]:
            yield "evaluate", ipc, arch, len(methods) * len(seeds) * len(labels)


def threads(cfg: dict, rule: str) -> int:
    return int((cfg.get("threads") or {}).get(rule, 2 if rule == "train_base" else 1))


def main() -> None:
    for path in sys.argv[1:] or ["config/imagenet1k.yaml", "config/tiny_imagenet.yaml"]:
        cfg = yaml.safe_load(Path(path).read_text())
        print(f"\n{path} (dataset {cfg['dataset']['name']}, gpus_per_job {cfg.get('gpus_per_job', 0)})")
        print("| job | IPC | student | jobs | mem_mb | runtime (min) | cpus_per_task | GPUs | GPU-hours (all jobs) |")
        print("|---|---|---|---|---|---|---|---|---|")
        total = 0.0
        for rule, ipc, arch, count in jobs(cfg):
            runtime = res.runtime_min(cfg, rule, ipc, arch)
            gpus = res.gpus(cfg, rule)
            hours = count * runtime * gpus / 60
            total += hours
            print(f"| {rule} | {ipc if rule not in ('train_base', 'train_prior', 'pool_member') else '-'} | {arch or '-'} | {count} | "
                  f"{res.mem_mb(cfg, rule, ipc)} | {runtime} | {res.cpus(cfg, rule, threads(cfg, rule))} | {gpus} | "
                  f"{hours:.1f} |")
        print(f"total: {total:.0f} GPU-hours (requested upper bounds)")


if __name__ == "__main__":
    main()
