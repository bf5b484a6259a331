"""Cluster resources (each stage's resources(), teddy.stages) computed from config/imagenet1k.yaml:
read back from a dry run."""

import copy
import re
import shutil

import pytest
import yaml
from fixtures import REPO, snakemake

from teddy.config import load_config
from teddy.machine import machine_from_config
from teddy.stages import stage


def _dry_run_resources(tmp_path, config_file="imagenet1k.yaml", edit=None, args=()):
    """Each job of a dry run, by its first output: its rule, resources and `inputs`; `edit`
    changes the config (a dict) first."""
    work = tmp_path / "w"
    shutil.copytree(REPO / "config", work / "config")
    if edit is not None:
        cfg = yaml.safe_load((work / "config" / config_file).read_text())
        edit(cfg)
        (work / "config" / config_file).write_text(yaml.safe_dump(cfg))
    proc = snakemake(work, "-n", "--configfile", str(work / "config" / config_file), *args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", proc.stdout + proc.stderr):
        rule = re.match(r"rule (\w+):", block)
        output = re.search(r"output: ([^\s,]+)", block)
        found = re.search(r"resources: (.*)", block)
        threads = re.search(r"threads: (\d+)", block)
        inputs = re.search(r"input: (.*)", block)
        if rule and output and found:
            values = dict(kv.split("=", 1) for kv in found.group(1).split(", "))
            jobs[output.group(1)] = {"rule": rule.group(1), **values, "threads": int(threads.group(1)) if threads else 1,
                                     "inputs": inputs.group(1).split(", ") if inputs else []}
    return jobs


def test_imagenet1k_resources_grow_with_ipc_and_architecture(tmp_path):
    jobs = _dry_run_resources(tmp_path)
    ev = lambda ipc, arch: jobs[f"results/imagenet1k/eval/teddy/ipc{ipc}/{arch}/sre2l_imagenet1k/seed0.json"]
    for arch in ("resnet18", "resnet50", "resnet101", "mobilenet_v2"):
        assert int(ev(10, arch)["runtime"]) < int(ev(50, arch)["runtime"]) < int(ev(100, arch)["runtime"])
        assert int(ev(10, arch)["mem_mb"]) < int(ev(100, arch)["mem_mb"])
        assert ev(10, arch)["gpu"] == "1"
    assert int(ev(50, "resnet18")["runtime"]) < int(ev(50, "resnet50")["runtime"]) < int(ev(50, "resnet101")["runtime"])
    # 16 threads + 16 dataset.num_workers, capped at cpus_per_gpu (16) x 1 GPU
    assert max(int(j["cpus_per_task"]) for j in jobs.values() if j.get("gpu") == "1") == 16
    # distillation is sharded (distill.batches_per_shard): a job is one shard whatever the IPC, so
    # its request is flat in IPC while the number of jobs grows with it
    shards = lambda ipc: [j for o, j in jobs.items() if j["rule"] == "distill" and f"/teddy/ipc{ipc}/" in o]
    assert len(shards(10)) < len(shards(50)) < len(shards(100))
    assert len({(j["runtime"], j["mem_mb"]) for ipc in (10, 50, 100) for j in shards(ipc)}) == 1
    assert int(shards(100)[0]["mem_mb"]) < 16000 and shards(100)[0]["gpu"] == "1"


def _imagenet1k():
    cfg = load_config(yaml.safe_load((REPO / "config" / "imagenet1k.yaml").read_text()))
    return cfg, machine_from_config(cfg)


WILDCARDS = {"method": "teddy", "ipc": 50, "shard": 0, "arch": "resnet50", "protocol": "sre2l_imagenet1k", "seed": 0,
             "pool": "prior", "member": "epoch1"}


def test_a_retry_asks_for_more():
    cfg, machine = _imagenet1k()
    for name in ("train_base", "pool_member", "distill", "relabel", "evaluate"):
        mod = stage(name)
        settings = mod.settings(cfg, {**WILDCARDS, "pool": next(iter(cfg["pools"]))})
        first, second = (mod.resources(settings, attempt, machine) for attempt in (1, 2))
        assert second["runtime"] >= 2 * first["runtime"] - 1 and second["mem_mb"] > first["mem_mb"], name


def test_distill_is_costed_with_the_method_defaults():
    """An sre2l recipe without `iterations` runs the method's default (teddy.methods.full_recipe),
    and is costed so: the same as one that states it."""
    from teddy.methods import full_recipe

    cfg, machine = _imagenet1k()
    default = full_recipe({"method": "sre2l"})["iterations"]
    mod = stage("distill")
    cfg["distill"]["methods"]["implicit"] = {"method": "sre2l"}
    cfg["distill"]["methods"]["explicit"] = {"method": "sre2l", "iterations": default}
    cfg["distill"]["methods"]["short"] = {"method": "sre2l", "iterations": 10}
    cost = {name: mod.resources(mod.settings(cfg, {**WILDCARDS, "method": name}), 1, machine)["runtime"]
            for name in ("implicit", "explicit", "short")}
    assert cost["implicit"] == cost["explicit"] > cost["short"]


def test_the_cpu_demo_fits_the_test_node(tmp_path):
    jobs = _dry_run_resources(tmp_path, "config.yaml")
    for job in jobs.values():
        if job["rule"] != "all":
            assert int(job["mem_mb"]) <= 8000 and int(job.get("cpus_per_task", 1)) <= 2 and job.get("gpu", "0") == "0"


def test_student_jobs_are_costed_by_the_epochs_they_train():
    """A student recipe with stop_after_epoch trains (and relabels) fewer epochs than its schedule:
    relabel, evaluate and the ceiling ask for less time, as train_base does."""
    paper = load_config(yaml.safe_load((REPO / "config" / "fashion_mnist_paper.yaml").read_text()))
    for (cfg, machine), name in [(_imagenet1k(), "relabel"), (_imagenet1k(), "evaluate"),
                                 ((paper, machine_from_config(paper)), "ceiling")]:
        mod = stage(name)
        wildcards = {**WILDCARDS, "arch": "convnet", "protocol": "dc"} if name == "ceiling" else WILDCARDS
        settings = mod.settings(cfg, wildcards)
        full = mod.resources(settings, 1, machine)["runtime"]
        settings["recipe"] = {**settings["recipe"], "stop_after_epoch": 1}
        assert mod.resources(settings, 1, machine)["runtime"] < full, name


def test_an_ensemble_protocol_trains_each_teacher_once_and_teaches_with_all(tmp_path):
    """config/imagenet1k.yaml with G-VBSM's and EDC's protocols added: one train_base job per
    teacher architecture (five, resnet18 shared), and each protocol's students read their own
    teachers (online teacher outputs); stored, relabelling with four teachers costs more."""
    protocols = ["sre2l_imagenet1k", "gvbsm_imagenet1k", "edc_imagenet1k"]
    jobs = _dry_run_resources(tmp_path, edit=lambda cfg: cfg["evaluate"].update(protocols=protocols))
    bases = sorted(o for o, j in jobs.items() if j["rule"] == "train_base")
    assert bases == [f"results/imagenet1k/base/{a}/model.pt" for a in
                     ("alexnet", "efficientnet_b0", "mobilenet_v2", "resnet18", "shufflenet_v2_x0_5")]
    student = lambda protocol: next(j for o, j in jobs.items()
                                    if j["rule"] == "evaluate" and f"/{protocol}/" in o)
    teachers = lambda protocol: sorted(i.split("/")[-2] for i in student(protocol)["inputs"] if "/base/" in i)
    assert teachers("gvbsm_imagenet1k") == ["efficientnet_b0", "mobilenet_v2", "resnet18", "shufflenet_v2_x0_5"]
    assert teachers("edc_imagenet1k") == ["alexnet", "mobilenet_v2", "resnet18", "shufflenet_v2_x0_5"]
    assert teachers("sre2l_imagenet1k") == ["resnet18"]
    cfg, machine = _imagenet1k()
    relabel = stage("relabel")
    cost = lambda protocol: relabel.resources(relabel.settings(cfg, {**WILDCARDS, "protocol": protocol}), 1,
                                              machine)["runtime"]
    assert cost("gvbsm_imagenet1k") > cost("sre2l_imagenet1k")


def test_given_weights_are_costed_as_an_evaluation_not_a_training_run():
    """train_base with base.weights only evaluates the test split: minutes, not the recipe's epochs."""
    cfg, machine = _imagenet1k()
    mod = stage("train_base")
    assert cfg["base"]["weights"] == "torchvision"
    given = mod.resources(mod.settings(cfg, {"arch": "resnet18"}), 1, machine)
    cfg["base"]["weights"] = None
    trained = mod.resources(mod.settings(cfg, {"arch": "resnet18"}), 1, machine)
    assert given["runtime"] < 60 < trained["runtime"] and given["gpu"] == trained["gpu"] == 1


def test_gpu_jobs_ask_for_at_most_cpus_per_gpu_and_a_thread_override_moves_the_request(tmp_path):
    """A site caps CPUs per GPU: threads and DataLoader workers are scaled down to the cap
    together; a thread count overridden on the command line moves cpus_per_task with it."""
    def edit(cfg):
        cfg.update(gpus_per_job=1, cpus_per_gpu=8)
        cfg["dataset"]["num_workers"] = 12
    jobs = _dry_run_resources(tmp_path, "config.yaml", edit, args=("--cores", "64", "--set-threads", "evaluate=4"))
    gpu_jobs = [j for j in jobs.values() if j.get("gpu") == "1"]
    assert gpu_jobs and all(int(j["cpus_per_task"]) <= 8 for j in gpu_jobs)
    base = next(j for j in gpu_jobs if j["rule"] == "train_base")  # 2 threads + 12 workers -> 1 + 7
    assert (base["threads"], int(base["cpus_per_task"])) == (1, 8)
    evaluate = [j for j in gpu_jobs if j["rule"] == "evaluate"]  # 4 threads (the override) + 4 workers
    assert evaluate and all((j["threads"], int(j["cpus_per_task"])) == (4, 8) for j in evaluate)
    cpu_jobs = [j for j in jobs.values() if j.get("gpu") == "0"]
    assert cpu_jobs and all(int(j["cpus_per_task"]) == j["threads"] for j in cpu_jobs)


def test_student_jobs_are_costed_without_scanning_the_tree(tmp_path, monkeypatch):
    """Every evaluate job's resources need the test split's size only: no walk of a class-folder
    tree per job (ImageNet-1K's has 1.28 M files), however many jobs the DAG holds."""
    from fixtures import write_class_folders

    from teddy import image_folder

    root = write_class_folders(tmp_path / "d", ["a", "b", "c"], per_class=12, size=12, test_split="test")
    cfg = yaml.safe_load((REPO / "config" / "image_folder.yaml").read_text())
    cfg["dataset"]["root"] = str(root)
    cfg = load_config(cfg)
    machine = machine_from_config(cfg)
    walks = []
    real = image_folder.image_files
    monkeypatch.setattr(image_folder, "image_files", lambda d: walks.append(d) or real(d))
    mod = stage("evaluate")
    for seed in range(5):
        for arch in cfg["evaluate"]["students"]:
            wildcards = {**WILDCARDS, "arch": arch, "protocol": "teddy_small_kd", "seed": seed, "ipc": 10}
            assert mod.resources(mod.settings(cfg, wildcards), 1, machine)["runtime"] > 0
    assert walks == []


def test_a_config_load_walks_the_class_folders_once_and_later_loads_and_resources_not_at_all(tmp_path, monkeypatch):
    """One walk of each class folder of each split per tree: the config load's checks (the tree,
    the IPC against the smallest class) share it, the resource functions read its counts, and a
    later load (another process: the in-memory cache cleared) reads them from the scan file beside
    the normalisation file, until a class folder changes."""
    from collections import Counter

    from fixtures import write_class_folders

    from teddy import image_folder

    root = write_class_folders(tmp_path / "d", ["a", "b", "c"], per_class=12, size=12, test_split="test")
    cfg = yaml.safe_load((REPO / "config" / "image_folder.yaml").read_text())
    cfg["dataset"]["root"] = str(root)
    cfg["results_dir"] = str(tmp_path / "results")
    walks = Counter()
    real = image_folder.image_files
    monkeypatch.setattr(image_folder, "image_files", lambda d: walks.update([str(d)]) or real(d))
    monkeypatch.setattr(image_folder, "_SCANS", {})

    loaded = load_config(copy.deepcopy(cfg))
    assert sorted(walks) == sorted(str(root / split / c) for split in ("train", "test") for c in "abc")
    assert set(walks.values()) == {1}
    machine = machine_from_config(loaded)
    for name in ("train_base", "pool_member", "distill"):
        mod = stage(name)
        wildcards = {**WILDCARDS, "method": next(iter(loaded["distill"]["methods"])), "ipc": 1}
        assert mod.resources(mod.settings(loaded, wildcards), 1, machine)["runtime"] > 0
    assert set(walks.values()) == {1}, "a resource function walked the tree again"

    walks.clear()
    monkeypatch.setattr(image_folder, "_SCANS", {})  # a new process: only the scan file is left
    load_config(copy.deepcopy(cfg))
    assert walks == Counter() and (tmp_path / "results" / "data" / image_folder.SCAN_FILE).is_file()

    (root / "train" / "b" / "extra.png").write_bytes((root / "train" / "b" / sorted(
        p.name for p in (root / "train" / "b").iterdir())[0]).read_bytes())
    assert image_folder.train_counts(loaded["dataset"]) == [12, 13, 12]  # the changed folder is counted again


def test_the_cost_model_counts_flops_not_pixels():
    """FLOPs from torch.utils.flop_counter: a ResNet-18 with a stride-1 stem (Tiny-ImageNet's) is
    not (224/64)^2 times cheaper at 64 px, as the old square law had it; time is linear in the
    work; a retried job asks for more time on each attempt."""
    from teddy.resources import TRAIN_STEP_FORWARDS, compute_seconds, flops_per_s, forward_flops, runtime_min

    small = forward_flops({"arch": "resnet18_small"}, (200, 3, 64))
    strided = forward_flops({"arch": "resnet18"}, (200, 3, 64))
    full = forward_flops({"arch": "resnet18"}, (1000, 3, 224))
    assert small > 10 * strided and small > full  # the stem keeps 64 x 64 through layer1
    # one 3x3 convolution of 1 -> 8 channels at 8 x 8 (padding 1), then the classifier: 2 FLOPs a MAC
    convnet = forward_flops({"arch": "convnet", "depth": 1, "width": 8, "norm": "none"}, (10, 1, 8))
    assert convnet >= 2 * 8 * 8 * 8 * 9
    seconds = compute_seconds({"arch": "resnet18"}, (1000, 3, 224), 1, trained=1000)
    assert seconds == pytest.approx(1000 * TRAIN_STEP_FORWARDS * full / flops_per_s("resnet18", 1))
    assert seconds == pytest.approx(1000 / 3400, rel=0.01)  # the measured H100 throughput it comes from
    assert compute_seconds({"arch": "resnet18"}, (1000, 3, 224), 1, trained=2000) == pytest.approx(2 * seconds)
    assert flops_per_s("resnet18_small", 1) == flops_per_s("resnet18", 1)  # a variant runs at its family's rate
    assert flops_per_s("convnet", 2) == 2 * min(flops_per_s(a, 1) for a in ("resnet18", "resnet50", "mobilenet_v2"))
    assert runtime_min(3600, 2) == 2 * runtime_min(3600, 1) and runtime_min(3600, 3) == 3 * runtime_min(3600, 1)
