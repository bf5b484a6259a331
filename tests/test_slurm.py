"""The real pipeline through the SLURM profile, on a private one-node SLURM cluster.

The cluster (tests/slurm/local_slurm.py, the session fixture ``slurm_env``): one node, 2 CPUs,
one fake GPU. The tiny Fashion-MNIST pipeline of tests/test_workflow.py, shrunk to one job per
rule, runs through the shipped ``workflow/profiles/slurm`` with the test cluster's pins
(``tests/slurm/profile``) over it and ``gpus_per_job: 1`` (about 3 minutes on 2 busy cores);
every stage must have been its own SLURM job, the training stages with a GPU allocated and the
CPU stages without. Then a distillation job is requeued by SLURM mid-run and must resume from
its checkpoint. Skips, saying why, where SLURM cannot run (see tests/slurm/install_slurm.sh).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures import (REPO, SLURM_PROFILE, SLURM_TEST_PROFILE, snakemake_cmd, tiny_config, write_fashion_mnist,
                      write_workdir)

GPU_RULES = {"train_base", "train_prior", "pool_member", "distill", "relabel", "evaluate", "ceiling"}
CPU_RULES = {"pool_manifest", "gather", "aggregate", "normalisation"}
LOCAL_RULES = {"pool_manifest", "aggregate"}  # workflow/Snakefile's localrules: they run where snakemake runs


def workflow_rules() -> set[str]:
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^rule (\w+):", text, flags=re.M))


def profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def test_shipped_profile_fits_a_real_cluster():
    """No thread pins (the config's `threads:` decide), no resources of ours that would replace
    a site's (a workflow profile's default-resources replaces the site profile's whole block),
    and a typical site's status checks: sacct, the plugin's default, and an account expected."""
    shipped = profile(SLURM_PROFILE)
    assert "set-threads" not in shipped
    assert "default-resources" not in shipped and "set-resources" not in shipped
    assert shipped["executor"] == "slurm"
    assert "slurm-status-command" not in shipped and "slurm-no-account" not in shipped
    local = profile(REPO / "workflow" / "profiles" / "default")
    assert "default-resources" not in local and "set-resources" not in local


def test_the_local_rules_are_the_light_bookkeeping_ones():
    snakefile = (REPO / "workflow" / "Snakefile").read_text()
    declared = set(re.findall(r"^    (\w+),$", snakefile.split("localrules:", 1)[1].split("\n\n", 1)[0], flags=re.M))
    assert declared == LOCAL_RULES | {"all"} and LOCAL_RULES <= CPU_RULES


def test_test_profile_fits_the_test_node_and_names_only_workflow_rules():
    rules = workflow_rules()
    assert rules == GPU_RULES | CPU_RULES  # update both lists here when a rule is added
    shipped, test = profile(SLURM_PROFILE), profile(SLURM_TEST_PROFILE)
    assert test["max-threads"] == 2  # the test node's CPUs, one cap for every rule
    assert test["default-resources"] == {"slurm_partition": "debug"}
    # the accounting-free test cluster's status command and its missing accounts live here
    assert test["slurm-status-command"] == "squeue" and test["slurm-no-account"] is True
    # sizes and GPUs come from the workflow config, never from a profile; a per-rule entry must
    # name a workflow rule (and Snakemake refuses an empty entry)
    for p in (shipped, test):
        assert set(p.get("set-threads") or {}) <= rules
        overrides = p.get("set-resources") or {}
        assert set(overrides) <= rules and all(overrides.values())
        assert not any("gpu" in r for r in overrides.values())


@pytest.mark.parametrize("workflow_profile", [None, SLURM_PROFILE])
def test_a_site_profile_reaches_every_job(tmp_path, workflow_profile):
    """A site keeps its account and partition in its own profile (--profile); they must reach
    every job, with the shipped SLURM workflow profile and with the local default one."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "config.yaml").write_text(yaml.safe_dump(
        {"default-resources": {"slurm_account": "acct42", "slurm_partition": "cpu_part"},
         "set-resources": {"evaluate": {"slurm_partition": "gpu_part"}}}))
    work = write_workdir(tmp_path / "work", tiny_config(write_fashion_mnist(tmp_path / "data", n_train=40,
                                                                            n_test=20)))
    profiles = ["--workflow-profile", str(workflow_profile)] if workflow_profile else []
    cmd = snakemake_cmd(work, "-n", "--profile", str(site), *profiles)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", proc.stdout, flags=re.M)
    assert len(jobs) > 10 and {rule for rule, _ in jobs} >= {"train_base", "distill", "evaluate"}
    for rule, resources in jobs:
        assert "slurm_account=acct42" in resources, (rule, resources)
        partition = "gpu_part" if rule == "evaluate" else "cpu_part"
        assert f"slurm_partition={partition}" in resources, (rule, resources)


def scontrol(env: dict, *args: str) -> str:
    proc = subprocess.run(["scontrol", *args], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def kill_job_processes(jobid: str) -> int:
    """SIGKILL, by PID, every process left of SLURM job `jobid` on this machine."""
    killed = 0
    for proc in Path("/proc").iterdir():
        try:
            mine = f"SLURM_JOB_ID={jobid}".encode() in (proc / "environ").read_bytes().split(b"\0")
            if proc.name.isdigit() and mine:
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            pass
    return killed


@pytest.fixture(scope="module")
def tiny_run(slurm_env, tmp_path_factory):
    """The tiny pipeline through the SLURM profile, once: (workdir, snakemake's output)."""
    root = tmp_path_factory.mktemp("tiny_slurm")
    cfg = tiny_config(write_fashion_mnist(root / "data", n_train=200, n_test=60))
    cfg["gpus_per_job"] = 1
    cfg["pools"]["prior"]["epochs"] = [1]
    cfg["distill"]["ipc"] = [1]
    del cfg["distill"]["methods"]["random"]  # one job per rule: each SLURM job costs a snakemake start-up
    cfg["evaluate"].update(students=["convnet"], seeds=[0])
    work = write_workdir(root / "work", cfg)
    # 8 jobs of about 30 s each (mostly a snakemake start-up), longer where the 2 cores are shared
    proc = subprocess.run(snakemake_cmd(work, "--cores", "2", slurm=True), cwd=work, env=slurm_env,
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return work, out


@pytest.mark.slow
def test_tiny_pipeline_runs_through_slurm_with_gpus(slurm_env, tiny_run):
    work, out = tiny_run
    table = pd.read_csv(work / "results/tiny/tables/accuracy.csv")
    table = table[table["kind"] == "measured"]  # published rows sit beside ours
    assert len(table) == 1 and table["mean"].between(0, 100).all()

    # every stage but the local bookkeeping was its own SLURM job, with its SLURM log kept
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)", out)
    rule_of = {jobid: re.search(r"/rule_(\w+)/", log).group(1) for jobid, log in submitted}
    # online KD: no relabel; a base model trained here: no train_prior; an IDX dataset needs no
    # normalisation pass (the tiny config has a ceiling section: ceiling runs, on a GPU)
    not_run = {"relabel", "train_prior", "normalisation"}
    assert sorted(rule_of.values()) == sorted((GPU_RULES | CPU_RULES) - not_run - LOCAL_RULES), \
        f"submitted {sorted(rule_of.values())}\n" + out[-3000:]
    assert (work / "results/tiny/pool/prior/manifest.csv").is_file()  # the local rules ran, here
    assert all(Path(log).is_file() for _, log in submitted)

    # gpus_per_job: 1 reached sbatch for the training rules only (the controller keeps finished
    # jobs for MinJobAge=3600 s)
    for jobid, rule in rule_of.items():
        show = scontrol(slurm_env, "show", "job", jobid)
        assert "JobState=COMPLETED" in show, show
        has_gpu = re.search(r"TresPerJob=gres:gpu:1\b|gres/gpu=1\b", show) is not None
        assert has_gpu == (rule in GPU_RULES), f"{rule} (job {jobid}):\n{show}"


@pytest.mark.slow
def test_requeued_job_resumes_from_its_checkpoint(slurm_env, tiny_run):
    """SLURM requeues a running distillation (as after preemption); started again, it resumes."""
    work, _ = tiny_run
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    cfg["distill"]["methods"]["teddy"].update(iterations=300, checkpoint_every=5)
    write_workdir(work, cfg)
    R = work / "results" / "tiny"
    ckpt = R / "distilled/teddy/ipc2/shards/0/distill.ckpt"
    run = subprocess.Popen(snakemake_cmd(work, "--cores", "2", "results/tiny/distilled/teddy/ipc2/meta.json",
                                         slurm=True), cwd=work,
                           env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ckpt.exists():
            assert run.poll() is None and time.monotonic() < deadline, "no distillation checkpoint"
            time.sleep(0.1)
        jobid = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm_env, capture_output=True,
                               text=True).stdout.split()[0]
        scontrol(slurm_env, "requeue", jobid)
        while "JobState=PENDING" not in scontrol(slurm_env, "show", "job", jobid):
            assert time.monotonic() < deadline, "the requeued job never went back to PENDING"
            time.sleep(0.5)
        # On the test node (proctrack/linuxproc) the job's outer snakemake can still be shutting
        # down when the job is back in the queue: finish what is left of the first attempt, as a
        # lost node would, before the job may start again.
        kill_job_processes(jobid)
        # a requeued job waits about two minutes (BeginTime) before it may start again: not here
        scontrol(slurm_env, "update", f"JobId={jobid}", "StartTime=now")
        out, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out[-6000:]
    assert "Restarts=1" in scontrol(slurm_env, "show", "job", jobid)
    log = (R / "logs/distill/teddy/ipc2/shard0.log").read_text()
    assert "resuming teddy-statistics ipc2 batch 1/1 from" in log, log[-2000:]
    assert (R / "distilled/teddy/ipc2/meta.json").exists() and not ckpt.exists()
