"""What a cluster run asks for, job by job, from each stage's resources (teddy.stages, first
attempt), with the expected GPU-hours (runtime x GPUs, the formula's runtime includes its 1.5x
margin and 10 min per job).

    PYTHONPATH=src .venv/bin/python benchmarks/resources_table.py config/imagenet1k.yaml config/tiny_imagenet.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from teddy.config import load_config
from teddy.cpus import cpu_split
from teddy.jobs import shard_count
from teddy.machine import machine_from_config
from teddy.pool import member_names
from teddy.protocols import cells, config_protocol
from teddy.stages import stage


def jobs(cfg: dict):
    """(rule, wildcards, count) of every job of the config's DAG that asks for resources."""
    ev = cfg["evaluate"]
    methods, seeds = cfg["distill"]["methods"], ev["seeds"]
    pools = sorted({r["pool"] for r in methods.values() if r.get("pool")})
    # protocols whose teacher outputs rule relabel stores (KD protocols under teacher_outputs: stored)
    stored = [name for name in ev["protocols"]
              if ev.get("teacher_outputs") == "stored" and config_protocol(cfg, name)["labels"] == "kd"]
    yield "train_base", {"arch": cfg["base"]["arch"]}, 1
    for p in pools:
        if cfg["pools"][p].get("recipe"):
            yield "train_prior", {"pool": p}, 1
        for m in member_names(cfg["pools"][p])[:1]:
            yield "pool_member", {"pool": p, "member": m}, len(member_names(cfg["pools"][p]))
    for ipc in cfg["distill"]["ipc"]:
        for m in methods:
            yield "distill", {"method": m, "ipc": ipc, "shard": 0}, shard_count(cfg, m, ipc)  # one job per shard
            yield "gather", {"method": m, "ipc": ipc}, 1
            for name in stored:
                yield "relabel", {"method": m, "ipc": ipc, "protocol": name, "seed": seeds[0]}, len(seeds)
            for arch, name in cells(cfg):
                yield "evaluate", {"method": m, "ipc": ipc, "arch": arch, "protocol": name, "seed": seeds[0]}, \
                    len(seeds)


def threads(cfg: dict, rule: str) -> int:
    return int(cfg["threads"].get(rule, 2 if rule in ("train_base", "train_prior") else 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=["config/imagenet1k.yaml", "config/tiny_imagenet.yaml"])
    for path in parser.parse_args().configs:
        cfg = load_config(yaml.safe_load(Path(path).read_text()))
        machine = machine_from_config(cfg)
        print(f"\n{path} (dataset {cfg['dataset']['name']}, gpus_per_job {cfg['gpus_per_job']})")
        print("| job | wildcards | jobs | mem_mb | runtime (min) | cpus_per_task | GPUs | GPU-hours (all jobs) |")
        print("|---|---|---|---|---|---|---|---|")
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
