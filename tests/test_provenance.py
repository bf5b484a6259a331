"""Stage settings as rule params (teddy.stages.<rule>.settings): a changed recipe reruns the jobs
it shapes and nothing else; adding a cell (a seed, an IPC, a student) or moving the data changes
no finished job's settings, and a rerun shard keeps the batches it finished."""

import copy
from pathlib import Path

import pytest
import yaml

from fixtures import REPO, set_protocol, snakemake, tiny_config, write_fashion_mnist, write_workdir
from teddy.config import load_config
from teddy.stages import STAGES, stage

CFG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
WILDCARDS = {"method": "teddy", "ipc": 1, "shard": 0, "arch": "convnet", "protocol": "teddy_small_kd", "seed": 0,
             "pool": "prior", "member": "epoch1"}
JOBS = [s for s in STAGES if s not in ("pool_manifest", "aggregate")]  # these two read no config value


def settings_by_stage(cfg):
    cfg = load_config({**copy.deepcopy(cfg), "ceiling": cfg.get("ceiling") or {"epochs": 1}})
    return {name: stage(name).settings(cfg, WILDCARDS) for name in JOBS}


def changed(edit) -> set:
    """The stages whose settings differ after `edit` is applied to a copy of the default config."""
    before = settings_by_stage(CFG)
    cfg = copy.deepcopy(CFG)
    edit(cfg)
    after = settings_by_stage(cfg)
    return {name for name in JOBS if before[name] != after[name]}


def set_key(*path_and_value):
    *path, value = path_and_value

    def edit(cfg):
        section = cfg
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, stages", [
    (set_key("ceiling", "epochs", 7), {"ceiling"}),
    (set_key("evaluate", "teacher_outputs", "stored"), {"evaluate"}),
    (set_key("evaluate", "amp", True), {"evaluate", "relabel", "ceiling"}),
    (set_key("evaluate", "processes", 2), {"evaluate", "relabel"}),
    (set_key("gpus_per_job", 2), {"evaluate", "relabel"}),
    (set_key("base", "recipe", "lr", 0.5), {"train_base", "train_prior", "pool_member"}),
    (set_key("distill", "methods", "teddy", "lr", 0.5), {"distill", "gather"}),
    (set_key("distill", "seed", 3), {"distill"}),
    (set_key("pools", "prior", "epochs", [1]), {"train_prior", "pool_member", "distill"}),
    (set_key("arch_options", "convnet", "width", 9), {"train_base", "train_prior", "pool_member", "distill",
                                                      "evaluate", "ceiling"}),
    (set_key("dataset", "val_fraction", 0.2), set(JOBS)),
])
def test_a_changed_value_changes_the_settings_of_the_stages_it_shapes(edit, stages):
    assert changed(edit) == stages


@pytest.mark.parametrize("edit", [
    set_key("evaluate", "seeds", [0, 1, 2, 3]),
    set_key("evaluate", "students", ["convnet", "resnet10_w16"]),
    set_key("distill", "ipc", [1, 2, 3]),
    set_key("dataset", "root", "/elsewhere"),
    set_key("dataset", "num_workers", 8),
    set_key("evaluate", "num_workers", 3),
    set_key("evaluate", "in_memory_max_mb", 5),
    set_key("device", "cpu"),
    set_key("threads", "evaluate", 4),
    set_key("distill", "stack", 4),                       # speed knobs: the set does not depend on them
    set_key("distill", "methods", "teddy", "stack", 8),
    set_key("distill", "methods", "teddy", "compile", True),
    set_key("evaluate", "device_memory_fraction", 0.5),  # where the student's set lies: same batches
    set_key("evaluate", "in_memory_max_mb", 1),
    set_key("evaluate", "compile", True),  # torch.compile: a speed knob
])
def test_adding_a_cell_or_moving_the_data_changes_no_settings(edit):
    assert changed(edit) == set()


def test_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="no stage 'nope'"):
        stage("nope")


def _dry_run(work, cfg, *args):
    proc = snakemake(write_workdir(work, cfg), "-n", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def test_snakemake_reruns_a_finished_job_when_its_recipe_changes(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=120, n_test=20)
    cfg = tiny_config(data)
    cfg["base"]["recipe"]["epochs"] = 2
    work = write_workdir(tmp_path / "w", cfg)
    proc = snakemake(work, "--cores", "1", "--until", "train_base")
    assert proc.returncode == 0, proc.stderr[-3000:]

    more_seeds = copy.deepcopy(cfg)
    more_seeds["evaluate"]["seeds"] = [0, 1, 2]
    assert "rule train_base:" not in _dry_run(work, more_seeds, "--until", "train_base")

    moved = tmp_path / "moved"
    Path(data).rename(moved)
    elsewhere = copy.deepcopy(cfg)
    elsewhere["dataset"]["root"] = str(moved)
    assert "rule train_base:" not in _dry_run(work, elsewhere, "--until", "train_base")

    new_recipe = copy.deepcopy(elsewhere)
    new_recipe["base"]["recipe"]["lr"] = 0.01
    out = _dry_run(work, new_recipe, "--until", "train_base")
    assert "rule train_base:" in out and "params have changed" in out.lower(), out[-3000:]


@pytest.mark.slow
def test_evaluate_processes_rerun_evaluate_and_a_moved_dataset_reruns_nothing(tmp_path):
    """After a whole tiny run: changing evaluate.processes lists exactly the evaluate jobs (and
    relabel's, none here), moving dataset.root lists none; a shard run again under the moved
    dataset keeps its finished batches (its marker hash is unchanged)."""
    data = write_fashion_mnist(tmp_path / "data", n_train=120, n_test=20)
    cfg = tiny_config(data)
    cfg["base"]["recipe"]["epochs"] = 2
    cfg["evaluate"].update(students=["convnet"], seeds=[0])
    set_protocol(cfg, epochs=1)
    cfg["distill"].update(ipc=[2], batches_per_shard=1)
    cfg["distill"]["methods"]["teddy"].update(iterations=2, batch_size=10)
    cfg.pop("ceiling")
    work = write_workdir(tmp_path / "w", cfg)
    proc = snakemake(work, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    processes = copy.deepcopy(cfg)
    processes["evaluate"]["processes"] = 2
    out = _dry_run(work, processes)
    assert "rule evaluate:" in out and "params have changed" in out.lower(), out[-3000:]
    jobs = {line.split()[0] for line in out.splitlines() if line.startswith("rule ")}
    assert jobs == {"rule"} and {l.split()[1] for l in out.splitlines() if l.startswith("rule ")} == \
        {"evaluate:", "aggregate:", "all:"}, out[-3000:]

    moved = tmp_path / "moved"
    Path(data).rename(moved)
    elsewhere = copy.deepcopy(cfg)
    elsewhere["dataset"]["root"] = str(moved)
    assert "Nothing to be done" in _dry_run(work, elsewhere)

    # a shard run again (its done.json gone, as after an interruption) with the data moved keeps
    # its finished batch: the settings hash is unchanged, so the batch is not optimised again
    shard = work / "results/tiny/distilled/teddy/ipc2/shards/0"
    marker = (shard / "batches/0.json").read_text()
    (shard / "done.json").unlink()
    write_workdir(work, elsewhere)
    proc = snakemake(work, "--cores", "1", "results/tiny/distilled/teddy/ipc2/shards/0/done.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule distill:" in proc.stdout + proc.stderr
    log = (work / "results/tiny/logs/distill/teddy/ipc2/shard0.log").read_text()
    assert (shard / "batches/0.json").read_text() == marker  # not written again
    assert "teddy-statistics" not in log and (shard / "done.json").is_file(), log[-2000:]
