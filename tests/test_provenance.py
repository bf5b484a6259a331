"""Rule params from teddy.provenance: a changed recipe reruns the jobs it shapes and nothing else,
and adding a cell (a seed, an IPC, a student) changes no finished job's settings."""

import copy
from pathlib import Path

import pytest
import yaml

from fixtures import write_fashion_mnist
from teddy.provenance import stage_settings
from test_workflow import snakemake, tiny_config, write_workdir

REPO = Path(__file__).resolve().parents[1]
CFG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
JOBS = {"normalisation": {}, "train_base": {}, "pool_member": {"pool": "prior"}, "train_prior": {"pool": "prior"},
        "distill": {"method": "teddy"}, "relabel": {}, "evaluate": {"arch": "convnet"}, "ceiling": {"arch": "convnet"}}


def settings_by_stage(cfg):
    cfg = {**cfg, "ceiling": cfg.get("ceiling") or {"recipe": {"epochs": 1}}}
    return {stage: stage_settings(cfg, stage, **wc) for stage, wc in JOBS.items()}


def changed(edit) -> set:
    """The stages whose settings differ after `edit` is applied to a copy of the default config."""
    before = settings_by_stage(CFG)
    cfg = copy.deepcopy(CFG)
    edit(cfg)
    after = settings_by_stage(cfg)
    return {stage for stage in JOBS if before[stage] != after[stage]}


def set_key(*path_and_value):
    *path, value = path_and_value

    def edit(cfg):
        section = cfg
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, stages", [
    (set_key("evaluate", "recipe", "epochs", 7), {"evaluate", "relabel"}),
    (set_key("base", "recipe", "lr", 0.5), {"train_base", "train_prior", "pool_member"}),
    (set_key("distill", "methods", "teddy", "lr", 0.5), {"distill"}),
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
    set_key("evaluate", "students", ["convnet", "resnet18"]),
    set_key("distill", "ipc", [1, 2, 3]),
    set_key("dataset", "root", "/elsewhere"),
    set_key("dataset", "num_workers", 8),
    set_key("threads", "evaluate", 4),
    set_key("evaluate", "device_memory_fraction", 0.5),  # where the student's set lies: same batches
    set_key("evaluate", "in_memory_max_mb", 1),
    set_key("evaluate", "recipe", "compile", True),  # torch.compile: a speed knob
])
def test_adding_a_cell_or_moving_the_data_changes_no_settings(edit):
    assert changed(edit) == set()


def test_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="aggregate"):
        stage_settings(CFG, "aggregate")


def test_snakemake_reruns_a_finished_job_when_its_recipe_changes(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=120, n_test=20)
    cfg = tiny_config(data)
    cfg["base"]["recipe"]["epochs"] = 2
    work = write_workdir(tmp_path / "w", cfg)
    proc = snakemake(work, "--cores", "1", "--until", "train_base")
    assert proc.returncode == 0, proc.stderr[-3000:]

    more_seeds = copy.deepcopy(cfg)
    more_seeds["evaluate"]["seeds"] = [0, 1, 2]
    proc = snakemake(write_workdir(work, more_seeds), "-n", "--until", "train_base")
    assert proc.returncode == 0 and "rule train_base:" not in proc.stdout, proc.stdout[-3000:]

    new_recipe = copy.deepcopy(cfg)
    new_recipe["base"]["recipe"]["lr"] = 0.01
    proc = snakemake(write_workdir(work, new_recipe), "-n", "--until", "train_base")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "rule train_base:" in out and "params have changed" in out.lower(), out[-3000:]
