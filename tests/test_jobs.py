"""teddy.jobs.job_list is the workflow's DAG: per rule, as many jobs as a Snakemake dry run of
the same config schedules. Every shipped config is checked in tests/test_config_dry_runs.py; here
a class-folder config whose kd protocol's teacher outputs are stored (normalisation and relabel
jobs), and the jobs' names."""

from __future__ import annotations

import yaml
from fixtures import REPO, dry_run, job_list_matches_dry_run

from teddy.config import load_config
from teddy.jobs import Job, job_list


def stored_teacher_outputs(cfg: dict) -> dict:
    cfg["evaluate"]["teacher_outputs"] = "stored"
    return cfg


def test_job_list_counts_stored_teacher_outputs_jobs(tmp_path):
    scheduled = job_list_matches_dry_run(*dry_run(tmp_path, "image_folder.yaml", stored_teacher_outputs))
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
