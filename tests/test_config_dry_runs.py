"""Every shipped config file dry-runs as a user starts it (`snakemake -n --configfile
config/<name>.yaml`, in a work directory holding the repository's config/ folder), the paper
configs with the dataset root pointing at a tiny stand-in written in the dataset's real on-disk
format; where a config's DAG is known, its job counts (and GPUs per rule) are checked too, and for
every config teddy.jobs.job_list lists the jobs the dry run schedules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures import REPO, dry_run, job_counts, job_list_matches_dry_run, stand_in

from teddy.datasets import load_split
from teddy.jobs import method_eval_seeds, method_ipcs, shard_count
from teddy.pool import member_names
from teddy.protocols import cells

# every workflow config (config/protocols/ and its named/ folder hold evaluation protocols,
# validated in tests/test_protocols.py)
CONFIGS = sorted(str(p.relative_to(REPO / "config")) for p in (REPO / "config").rglob("*.yaml")
                 if "protocols" not in p.relative_to(REPO / "config").parts)
PAPER_CONFIGS = ["cifar10", "cifar100", "tiny_imagenet", "imagenet1k"]
GPU_RULES = ("train_base", "pool_member", "distill", "evaluate")  # and train_prior where a pool has its own run


def gpus_by_rule(output: str) -> dict[str, set[int]]:
    """rule -> the `gpu` resource values of its jobs in a dry run's job listing."""
    found, rule = {}, None
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif line.strip().startswith("resources:") and rule:
            g = re.search(r"\bgpu=(\d+)", line)
            found.setdefault(rule, set()).add(int(g.group(1)) if g else 0)
    return found


def expected_counts(cfg: dict) -> dict[str, int]:
    methods = cfg["distill"]["methods"].values()
    pools = sorted({m["pool"] for m in methods if m.get("pool")})
    shards = sum(shard_count(cfg, m, ipc) for m in cfg["distill"]["methods"] for ipc in method_ipcs(cfg["distill"], m))
    counts = {"train_base": 1, "train_prior": sum(1 for p in pools if cfg["pools"][p].get("recipe")),
              "pool_member": sum(len(member_names(cfg["pools"][p])) for p in pools),
              "pool_manifest": len(pools), "distill": shards, "gather": sum(len(method_ipcs(cfg["distill"], m)) for m in cfg["distill"]["methods"]),
              "evaluate": len(cells(cfg)) * sum(len(method_ipcs(cfg["distill"], m)) * len(method_eval_seeds(cfg, m))
                                                for m in cfg["distill"]["methods"]),
              "ceiling": len(cells(cfg)) * len((cfg.get("ceiling") or {}).get("seeds", [0])) if cfg.get("ceiling") else 0,
              "aggregate": 1, "all": 1}
    return {k: v for k, v in counts.items() if v}


def check_paper_config(name: str, cfg: dict, out: str) -> None:
    assert job_counts(out) == expected_counts(cfg), out[-1500:]
    gpus = gpus_by_rule(out)
    for rule in GPU_RULES + (("train_prior",) if "train_prior" in gpus else ()):
        assert gpus[rule] == {1}, (rule, gpus)
    assert gpus["aggregate"] == {0} and gpus["gather"] == {0}

    # the stand-in is what the config's dataset section reads
    train, test = load_split(cfg["dataset"], "train"), load_split(cfg["dataset"], "test")
    assert len(train) > 0 and len(test) > 0
    x, _ = train[0]
    assert x.shape[-1] == {"cifar10": 32, "cifar100": 32, "tiny_imagenet": 64, "imagenet1k": 224}[name]


def check_fashion_mnist_paper(name: str, cfg: dict, out: str) -> None:
    assert cfg["distill"]["ipc"] == [1, 10, 50] and len(cfg["evaluate"]["seeds"]) == 3
    assert set(cfg["distill"]["methods"]) == {"teddy", "sre2l", "herding", "random", "rded"}
    assert cfg["evaluate"]["protocols"] == ["dc", "teddy_small_kd"]
    assert {"convnet", "resnet10_w16"} <= set(cfg["evaluate"]["students"])
    counts = job_counts(out)
    # (convnet, dc), (convnet, teddy_small_kd), (resnet10_w16, teddy_small_kd): dc evaluates its ConvNet only
    assert counts["evaluate"] == 5 * 3 * 3 * 3
    assert counts["ceiling"] == 3 and counts["distill"] == 15 and counts["aggregate"] == 1
    assert counts["pool_member"] == 3  # prior epochs 1, 2 and the single base model


def check_calibration(name: str, cfg: dict, out: str) -> None:
    """Random subsets (5 at IPC 1 and 10, 3 at 50: one network each, as DC's experiments), herding
    (one set, 5 student seeds at IPC 1 and 10, 3 at 50) and the whole set, under the dc protocol
    (dc_mnist for MNIST)."""
    counts = job_counts(out)
    protocol = "dc_mnist" if name == "calibration_mnist" else "dc"
    assert cfg["evaluate"]["protocols"] == [protocol] and cfg["evaluate"]["seeds"] == [0]
    assert counts["evaluate"] == 5 + 5 + 3 + 5 + 5 + 3 and counts["ceiling"] == 1
    assert f"eval/herding/ipc10/convnet/{protocol}/seed4.json" in out
    assert f"eval/herding_ipc50/ipc50/convnet/{protocol}/seed2.json" in out and "herding_ipc50/ipc50/convnet/" \
        f"{protocol}/seed3" not in out
    assert f"eval/random_set4/ipc10/convnet/{protocol}/seed0.json" in out
    assert "eval/random_set2/ipc50/" in out and "eval/random_set3/ipc50/" not in out


def check_pool_ablation(name: str, cfg: dict, out: str) -> None:
    assert "pool/fresh" not in out  # a fresh pool has no member jobs and no manifest
    counts = job_counts(out)
    # 2 prior snapshots + 8 post ratios + 1 single; 9 methods x 3 seeds
    assert counts["pool_member"] == 11 and counts["pool_manifest"] == 3 and counts["distill"] == 9
    assert counts["evaluate"] == 27


def check_dc_comparison(name: str, cfg: dict, out: str) -> None:
    """teddy's gradient form with its prior pool, the same matching with a fresh model per
    iteration, at IPC 1 and 10, and the unrolled bilevel objective at IPC 1, under the dc protocol."""
    assert cfg["evaluate"]["protocols"] == ["dc"] and cfg["distill"]["ipc"] == [1, 10]
    assert {m["method"] for m in cfg["distill"]["methods"].values()} == {"teddy", "bilevel"}
    counts = job_counts(out)
    assert counts["evaluate"] == (2 * 2 + 1) * 3 and counts["distill"] == 5
    assert counts["pool_member"] == 2 and "pool/fresh" not in out  # the fresh pool has no members
    assert "eval/gradient_fresh/ipc10/convnet/dc/seed2.json" in out


def check_dc_reproduction(name: str, cfg: dict, out: str) -> None:
    """DC's own loop at IPC 1: two synthetic sets, five networks each, under the dc protocol, and
    no base model or pool (nothing reads them)."""
    assert cfg["evaluate"]["protocols"] == ["dc"] and cfg["distill"]["ipc"] == [1]
    assert {m["method"] for m in cfg["distill"]["methods"].values()} == {"dc"}
    counts = job_counts(out)
    assert counts["distill"] == 2 and counts["evaluate"] == 2 * 5
    assert "train_base" not in counts and "pool_member" not in counts
    assert "eval/dc_seed1/ipc1/convnet/dc/seed4.json" in out


def check_dc_pool(name: str, cfg: dict, out: str) -> None:
    """DC's recipe with a cached pool of 4 random networks: two sets at IPC 1, one at IPC 10, five
    networks each under the dc protocol, and no base model or shared pool."""
    assert cfg["evaluate"]["protocols"] == ["dc"] and cfg["distill"]["ipc"] == [1, 10]
    assert {(m["method"], m["pool_kind"], m["pool_size"]) for m in cfg["distill"]["methods"].values()} \
        == {("dc_pool", "random", 4)}
    counts = job_counts(out)
    assert counts["distill"] == 3 and counts["evaluate"] == 3 * 5
    assert "train_base" not in counts and "pool_member" not in counts
    assert "eval/dc_pool_random4/ipc10/convnet/dc/seed4.json" in out
    assert "dc_pool_random4_seed1/ipc10" not in out


CHECKS = {**{f"{name}.yaml": check_paper_config for name in PAPER_CONFIGS},
          "fashion_mnist_paper.yaml": check_fashion_mnist_paper, "ablations/pool.yaml": check_pool_ablation,
          "calibration.yaml": check_calibration, "calibration_mnist.yaml": check_calibration,
          "dc_comparison.yaml": check_dc_comparison, "dc_reproduction.yaml": check_dc_reproduction,
          "dc_pool.yaml": check_dc_pool}


def test_the_checks_name_shipped_configs():
    assert set(CHECKS) <= set(CONFIGS)


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_dry_runs(config_file, tmp_path):
    name = Path(config_file).stem

    def on_a_stand_in(cfg):
        cfg["dataset"]["root"] = str(stand_in(name, tmp_path / "data", cfg))
        return cfg
    cfg, out = dry_run(tmp_path, config_file, on_a_stand_in if name in PAPER_CONFIGS else None)
    if config_file in CHECKS:
        CHECKS[config_file](name, cfg, out)
    job_list_matches_dry_run(cfg, out)
