"""teddy.jobs.job_list is the workflow's DAG: per rule, as many jobs as a Snakemake dry run of
the same config schedules (the demo config, the calibration config with its per-method IPCs and
student seeds, a paper config on a stand-in dataset, and a class-folder config whose kd protocol's
teacher outputs are stored: normalisation and relabel jobs)."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml
from fixtures import REPO, dry_run, job_counts, stand_in

from teddy.config import load_config
from teddy.jobs import Job, job_list


def stored_teacher_outputs(cfg: dict, tmp_path) -> dict:
    cfg["evaluate"]["teacher_outputs"] = "stored"
    return cfg


def paper_stand_in(cfg: dict, tmp_path) -> dict:
    cfg["dataset"]["root"] = str(stand_in("tiny_imagenet", tmp_path / "data", cfg))
    return cfg


CASES = {"config.yaml": None, "calibration.yaml": None, "tiny_imagenet.yaml": paper_stand_in,
         "image_folder.yaml": stored_teacher_outputs}


@pytest.mark.parametrize("config_file", CASES)
def test_job_list_counts_what_a_dry_run_schedules(config_file, tmp_path):
    edit = CASES[config_file]
    cfg, out = dry_run(tmp_path, config_file, edit and (lambda cfg: edit(cfg, tmp_path)))
    scheduled = job_counts(out)
    assert scheduled.pop("all") == 1  # the target rule: no job of job_list's
    jobs = job_list(load_config(cfg))
    assert dict(Counter(job.rule for job in jobs)) == scheduled
    assert len(set(jobs)) == len(jobs)  # each job once
    if config_file == "image_folder.yaml":
        assert scheduled["relabel"] and scheduled["normalisation"] == 1


def test_a_job_names_its_rule_and_wildcards():
    cfg = load_config(yaml.safe_load((REPO / "config" / "calibration.yaml").read_text()))
    evaluate = [job for job in job_list(cfg) if job.rule == "evaluate"]
    assert Job("evaluate", (("method", "herding"), ("ipc", 10), ("arch", "convnet"), ("protocol", "dc"),
                            ("seed", 4))) in evaluate
    # herding_ipc50: IPC 50 only, three student seeds
    assert sorted((j["ipc"], j["seed"]) for j in evaluate if j["method"] == "herding_ipc50") == [(50, 0), (50, 1),
                                                                                               (50, 2)]
    assert evaluate[0].wildcard_dict == {"method": "random", "ipc": 1, "arch": "convnet", "protocol": "dc", "seed": 0}
