"""The real pipeline through the SLURM profile, on a private one-node SLURM cluster.

The cluster (tests/local_slurm.py) is started once for this module: one node, 2 CPUs, one
fake GPU. The tiny Fashion-MNIST pipeline of tests/test_workflow.py, shrunk to one job per
rule, runs through ``workflow/profiles/slurm`` with ``gpus_per_job: 1`` (about 3 minutes on 2
busy cores); every stage must have been its own SLURM job, the training stages with a GPU
allocated and the CPU stages without. Then a distillation job is requeued by SLURM mid-run and
must resume from its checkpoint. Skips, saying why, where SLURM cannot run (see
tests/install_slurm.sh).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures import write_fashion_mnist
from local_slurm import SlurmUnavailable, local_slurm_cluster
from test_workflow import REPO, SNAKEMAKE, tiny_config, write_workdir

PROFILE = REPO / "workflow" / "profiles" / "slurm"
GPU_RULES = {"train_base", "train_prior", "pool_member", "distill", "relabel", "evaluate", "ceiling"}
CPU_RULES = {"pool_manifest", "gather", "aggregate", "normalisation"}


def workflow_rules() -> set[str]:
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^rule (\w+):", text, flags=re.M))


def test_profile_names_exactly_the_workflow_rules():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    rules = workflow_rules()
    assert rules == GPU_RULES | CPU_RULES  # update both lists here when a rule is added
    assert set(profile["set-threads"]) == rules, f"set-threads in {PROFILE / 'config.yaml'} vs rules {sorted(rules)}"
    # sizes and GPUs come from the workflow config (teddy.resources), never from the profile;
    # an override there must name a rule (and Snakemake refuses an empty entry)
    overrides = profile.get("set-resources") or {}
    assert set(overrides) <= rules and all(overrides.values())
    assert not any("gpu" in r for r in overrides.values())
    assert profile["slurm-status-command"] == "squeue"


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Start the local cluster once for this module; yield the environment for its clients."""
    try:
        cluster = local_slurm_cluster(tmp_path_factory.mktemp("slurm"))
        extra = cluster.__enter__()
    except SlurmUnavailable as exc:
        pytest.skip(f"local SLURM unavailable: {exc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # jobs rerun snakemake
    env.update(extra)
    try:
        yield env
    finally:
        cluster.__exit__(None, None, None)


def snakemake_on_slurm(work: Path, *args: str) -> list[str]:
    return SNAKEMAKE + ["--workflow-profile", str(PROFILE), "--snakefile", str(REPO / "workflow" / "Snakefile"),
                        "--directory", str(work), "--cores", "2",
                        # the profile's 40 s is for real clusters; MinJobAge=300 >= 3 x 1 s
                        "--slurm-init-seconds-before-status-checks", "1", "--retries", "0", "--latency-wait", "5",
                        *args]


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
    proc = subprocess.run(snakemake_on_slurm(work), cwd=work, env=slurm_env, capture_output=True, text=True,
                          timeout=420)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return work, out


@pytest.mark.slow
def test_tiny_pipeline_runs_through_slurm_with_gpus(slurm_env, tiny_run):
    work, out = tiny_run
    table = pd.read_csv(work / "results/tiny/tables/accuracy.csv")
    table = table[table["kind"] == "measured"]  # published rows sit beside ours
    assert len(table) == 1 and table["mean"].between(0, 100).all()

    # every stage was its own SLURM job, with its SLURM log kept
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)", out)
    rule_of = {jobid: re.search(r"/rule_(\w+)/", log).group(1) for jobid, log in submitted}
    # online KD: no relabel; a base model trained here: no train_prior; an IDX dataset needs no
    # normalisation pass (the tiny config has a ceiling section: ceiling runs, on a GPU)
    not_run = {"relabel", "train_prior", "normalisation"}
    assert sorted(rule_of.values()) == sorted((GPU_RULES | CPU_RULES) - not_run), \
        f"submitted {sorted(rule_of.values())}\n" + out[-3000:]
    assert all(Path(log).is_file() for _, log in submitted)

    # gpus_per_job: 1 reached sbatch for the training rules only (the controller keeps finished
    # jobs for MinJobAge=300 s)
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
    run = subprocess.Popen(snakemake_on_slurm(work, "results/tiny/distilled/teddy/ipc2/meta.json"), cwd=work,
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
