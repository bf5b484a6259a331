"""The weak-model pool: prior/post/single members, manifests, sampling, the fresh-model
alternative and the config checks (CPU, a few seconds)."""

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
import yaml
from fixtures import REPO, snakemake, write_fashion_mnist

from teddy import stages
from teddy.config import check_config
from teddy.data import TensorImageDataset
from teddy.datasets import load_split
from teddy.errors import TeddyError
from teddy.io import load_json
from teddy.job_files import Files
from teddy.models import bn_layers, build_model, count_parameters
from teddy.pool import (FreshModelPool, WeakPool, choose_snapshot, load_model, load_pool, member_names, prune_channels,
                        read_manifest)
from teddy.stages import run_stage
from teddy.train import recalibrate_bn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(data_root: Path, results: Path) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["dataset"]["root"] = str(data_root)
    cfg["results_dir"] = str(results)
    cfg["device"] = "cpu"
    cfg["arch_options"] = {"convnet": {"depth": 2, "width": 8}}
    cfg["base"]["recipe"].update(epochs=2, batch_size=64)
    finetune = {"epochs": 1, "batch_size": 64, "optimizer": "sgd", "lr": 0.01}
    cfg["pools"] = {"prior": {"generator": "prior", "epochs": [1, 2]},
                    "by_accuracy": {"generator": "prior", "target_accuracies": [0.1, 0.99]},
                    "post": {"generator": "post", "ratios": [0.25, 0.5, 0.75], "finetune": finetune,
                             "recalibrate_batches": 2},
                    "single": {"generator": "single"},
                    "fresh": {"generator": "fresh", "fresh_steps": 3, "finetune": finetune}}
    cfg["distill"]["ipc"] = [1]
    cfg["distill"]["methods"]["teddy"].update(iterations=3, batch_size=10)
    cfg["distill"]["methods"]["teddy_fresh"] = {**cfg["distill"]["methods"]["teddy"], "pool": "fresh"}
    return cfg


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    """A tiny convnet trained for two epochs on the IDX fixture, with its per-epoch snapshots."""
    tmp = tmp_path_factory.mktemp("pool")
    cfg = tiny_config(write_fashion_mnist(tmp / "data", n_train=200, n_test=60), tmp / "results")
    base = tmp / "results" / "base" / "convnet"
    run_stage("train_base", cfg, {"arch": "convnet"}, Files(), Files(model=base / "model.pt", metrics=base / "metrics.json"))
    return cfg, base / "model.pt", base / "metrics.json"


def make_members(cfg, base_model, base_metrics, pool):
    out = Path(cfg["results_dir"]) / "pool" / pool
    paths = []
    for member in member_names(cfg["pools"][pool]):
        path = out / "members" / f"{member}.pt"
        run_stage("pool_member", cfg, {"pool": pool, "member": member}, Files(model=base_model, metrics=base_metrics),
                  Files(path))
        paths.append(path)
    return paths, out / "manifest.csv"


# --- members and manifests ------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["prior", "by_accuracy", "post", "single"])
def test_manifest_lists_every_member_with_accuracy(trained_base, pool):
    cfg, base_model, base_metrics = trained_base
    paths, manifest = make_members(cfg, base_model, base_metrics, pool)
    run_stage("pool_manifest", cfg, {"pool": "p"}, Files(*paths), Files(manifest))
    rows = pd.DataFrame(read_manifest(manifest))
    assert list(rows["member"]) == member_names(cfg["pools"][pool])
    assert (rows["generator"] == cfg["pools"][pool]["generator"]).all()
    assert rows["test_accuracy"].astype(float).between(0, 1).all()
    assert (rows["parameters"].astype(int) > 0).all() and (rows["flops"].astype(int) > 0).all()
    assert not list(Path(cfg["results_dir"]).rglob("*.ckpt"))
    for p in paths:  # every member runs forward
        model, meta = load_model(p)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and meta["member"] == p.stem


def test_prior_members_come_from_the_named_or_closest_snapshot(trained_base):
    cfg, base_model, base_metrics = trained_base
    accuracies = {int(e): s["val_accuracy"] for e, s in load_json(base_metrics)["snapshots"].items()}
    assert sorted(accuracies) == [1, 2]
    for member, target in (("acc0.1", 0.1), ("acc0.99", 0.99)):
        row = run_stage("pool_member", cfg, {"pool": "by_accuracy", "member": member},
                        Files(model=base_model, metrics=base_metrics), Files(Path(cfg["results_dir"]) / "acc" / f"{member}.pt"))
        closest = min(accuracies, key=lambda e: abs(accuracies[e] - target))
        assert row["made_from"] == f"epoch {closest}"
    snapshots = {1: 0.4, 2: 0.7, 3: 0.9}
    assert choose_snapshot("acc0.65", snapshots) == 2 and choose_snapshot("epoch3", snapshots) == 3
    with pytest.raises(TeddyError, match="snapshot epoch 7"):
        choose_snapshot("epoch7", snapshots)


def test_post_members_shrink_with_the_ratio_and_are_fine_tuned(trained_base):
    cfg, base_model, base_metrics = trained_base
    paths, manifest = make_members(cfg, base_model, base_metrics, "post")
    run_stage("pool_manifest", cfg, {"pool": "p"}, Files(*paths), Files(manifest))
    rows = pd.DataFrame(read_manifest(manifest))
    params, flops = rows["parameters"].astype(int).tolist(), rows["flops"].astype(int).tolist()
    base_params = count_parameters(load_model(base_model)[0])
    assert base_params > params[0] > params[1] > params[2]
    assert flops[0] > flops[1] > flops[2]
    assert (rows["finetune_epochs"].astype(int) == 1).all()
    assert rows["made_from"].tolist() == [f"base pruned at ratio {r}" for r in (0.25, 0.5, 0.75)]


# --- pruning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,channels,size", [("convnet", 1, 28), ("resnet18_small", 3, 32),
                                                ("resnet10_w16", 1, 28), ("resnet18", 3, 32),
                                                ("resnet50", 3, 32), ("resnet101", 3, 32),
                                                ("mobilenet_v2", 3, 32)])
def test_every_architecture_prunes_and_runs(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=channels, image_size=size)
    counts = [count_parameters(model)]
    for ratio in (0.3, 0.6):
        pruned = prune_channels(copy.deepcopy(model), ratio, (channels, size, size), 10)
        counts.append(count_parameters(pruned))
        assert pruned(torch.randn(2, channels, size, size)).shape == (2, 10)
    assert counts[0] > counts[1] > counts[2]


def test_unprunable_architecture_is_one_clear_error():
    linear_only = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))  # the output layer is kept whole
    with pytest.raises(TeddyError, match="no prunable channel.*base.arch"):
        prune_channels(linear_only, 0.5, (1, 28, 28), 10)
    with pytest.raises(TeddyError, match="outside"):
        prune_channels(build_model("convnet", 10, 1, 28, width=8), 1.0, (1, 28, 28), 10)


def test_bn_recalibration_moves_running_statistics_to_the_real_data():
    torch.manual_seed(0)
    model = build_model("convnet", 10, 1, 28, depth=2, width=8)
    model = prune_channels(model, 0.5, (1, 28, 28), 10)
    real = TensorImageDataset(torch.randn(256, 1, 28, 28) * 2 + 3, torch.randint(10, (256,)), list("abcdefghij"))
    first_bn = bn_layers(model)[0]
    with torch.no_grad():  # the real statistics of the first BN layer's input
        features = model.features[0](real.images)
    real_mean, real_var = features.mean((0, 2, 3)), features.var((0, 2, 3), unbiased=False)
    before = (first_bn.running_mean - real_mean).norm() + (first_bn.running_var - real_var).norm()
    recalibrate_bn(model, real, torch.device("cpu"), batches_to_use=4, batch_size=64)
    after = (first_bn.running_mean - real_mean).norm() + (first_bn.running_var - real_var).norm()
    assert after < 0.05 * before
    assert not model.training


# --- sampling ----------------------------------------------------------------------------------

def draws(pool, seed, n=30):
    generator = torch.Generator().manual_seed(seed)
    return [pool.index(i, generator) for i in range(n)]


def test_sampling_is_reproducible_under_a_seed():
    members = [nn.Linear(2, 2) for _ in range(4)]
    uniform = WeakPool(members, list("abcd"), "uniform")
    assert draws(uniform, 0) == draws(uniform, 0)
    assert draws(uniform, 0) != draws(uniform, 1)
    assert set(draws(uniform, 0)) == {0, 1, 2, 3}
    assert draws(WeakPool(members, list("abcd"), "round_robin"), 5, 8) == [0, 1, 2, 3, 0, 1, 2, 3]
    with pytest.raises(TeddyError, match="sampling"):
        WeakPool(members, list("abcd"), "greedy")


def test_pool_size_takes_the_first_members(trained_base, tmp_path):
    cfg, base_model, base_metrics = trained_base
    paths, _ = make_members(cfg, base_model, base_metrics, "post")
    assert load_pool(paths, size=2).names == ["prune0.25", "prune0.5"]
    assert len(load_pool(paths)) == 3


def test_fresh_pool_trains_new_models_reproducibly(trained_base):
    cfg = trained_base[0]
    real = load_split(cfg["dataset"], "train")
    pool = FreshModelPool(lambda: stages.build(cfg, "convnet"), real, cfg["pools"]["fresh"]["finetune"], steps=3)
    rng_before = torch.get_rng_state()
    first = pool.sample(0, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    bn = bn_layers(first)[0]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    again = pool.sample(0, torch.Generator().manual_seed(0))
    other = pool.sample(0, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(first.state_dict()["features.0.weight"], other.state_dict()["features.0.weight"])
    assert not any(p.requires_grad for p in first.parameters()) and not first.training


def test_fresh_pool_distills_without_member_files(trained_base):
    cfg = trained_base[0]
    out = Path(cfg["results_dir"]) / "distilled" / "teddy_fresh" / "ipc1" / "shards" / "0"
    done = run_stage("distill", cfg, {"method": "teddy_fresh", "ipc": 1, "shard": 0}, Files(pool=[]),
                     Files(done=out / "done.json"))
    assert done["seconds"] > 0 and done["batch_logs"][0]["iterations"] == 3 and len(done["files"]) == 10
    assert member_names(cfg["pools"]["fresh"]) == []


# --- config checks (what the workflow runs when it loads) ------------------------------------

def bad(cfg, match):
    with pytest.raises(TeddyError, match=match):
        check_config(cfg)


def test_bad_pool_configs_are_rejected_at_load(trained_base):
    cfg = trained_base[0]
    check_config(cfg)
    for ratio in (0.0, 1.0, 1.5, -0.2):
        c = copy.deepcopy(cfg)
        c["pools"]["post"]["ratios"] = [0.5, ratio]
        bad(c, r"outside \(0, 1\).*pools\.\*\.ratios")
    c = copy.deepcopy(cfg)
    c["pools"]["post"]["ratios"] = []
    bad(c, "empty pool")
    c = copy.deepcopy(cfg)
    c["pools"]["prior"]["epochs"] = [1, 3]  # the base run has 2 epochs
    bad(c, "pools.prior.epochs asks for epoch 3")
    c = copy.deepcopy(cfg)
    c["base"]["snapshot_epochs"] = [2]
    bad(c, "pools.prior.epochs asks for epoch 1")
    c = copy.deepcopy(cfg)
    c["distill"]["methods"]["teddy"]["pool_size"] = 3  # the prior pool has 2 members
    bad(c, "pool_size=3")
    with pytest.raises(TeddyError, match="generator"):
        member_names({"generator": "magic"})


def test_snapshot_beyond_base_run_fails_the_workflow_load(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["pools"]["prior"]["epochs"] = [1, int(cfg["base"]["recipe"]["epochs"]) + 1]
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"), timeout=120)
    assert proc.returncode != 0 and "pools.prior.epochs asks for epoch" in proc.stdout + proc.stderr
