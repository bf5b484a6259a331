"""Smoke test: the SLURM workflow profile drives a real (local) SLURM.

On the private one-node cluster (tests/slurm/local_slurm.py, the session fixture
``slurm_env``), a three-rule toy workflow runs through the shipped ``workflow/profiles/slurm``
with the test cluster's pins (``tests/slurm/profile``) over it; every job must have been a
SLURM job, the GPU rule with a GPU allocated. Skips with the reason when SLURM is not
installed here (see tests/slurm/install_slurm.sh).
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from fixtures import SLURM_PROFILE, SLURM_TEST_PROFILE, SNAKEMAKE

TOY_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "results/summary.txt",

    rule gpu_step:
        output:
            "results/gpu.txt",
        log:
            "logs/gpu_step.log",
        resources:
            gpu=1,
        shell:
            "(echo job=$SLURM_JOB_ID; echo gpus=${{CUDA_VISIBLE_DEVICES:-none}})"
            " > {output} 2> {log}"

    rule cpu_step:
        output:
            "results/cpu.txt",
        log:
            "logs/cpu_step.log",
        shell:
            "echo job=$SLURM_JOB_ID > {output} 2> {log}"

    rule combine:
        input:
            "results/gpu.txt",
            "results/cpu.txt",
        output:
            "results/summary.txt",
        log:
            "logs/combine.log",
        shell:
            "(cat {input}; echo job=$SLURM_JOB_ID) > {output} 2> {log}"
    """
)


def _job_ids(path: Path) -> list:
    return re.findall(r"^job=(\d+)$", path.read_text(), flags=re.M)


def test_profile_runs_jobs_through_slurm(slurm_env, tmp_path):
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    # the test profile's pins name the pipeline's rules, not the toy's: the toy runs through
    # the test profile only for its partition, status-check delay, retries and latency wait
    cmd = SNAKEMAKE + ["--profile", str(SLURM_PROFILE), "--workflow-profile", str(SLURM_TEST_PROFILE),
                       "--snakefile", str(tmp_path / "Snakefile"), "--directory", str(tmp_path), "--cores", "2"]
    try:
        res = subprocess.run(cmd, env=slurm_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"snakemake on SLURM timed out after 300 s:\n{exc.stderr}")
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]

    results = tmp_path / "results"
    for name in ("gpu.txt", "cpu.txt", "summary.txt"):
        assert (results / name).is_file(), f"missing {name}\n{log[-4000:]}"

    # Every rule ran inside a SLURM job, each its own job.
    gpu_ids = _job_ids(results / "gpu.txt")
    cpu_ids = _job_ids(results / "cpu.txt")
    all_ids = _job_ids(results / "summary.txt")
    assert len(gpu_ids) == 1 and len(cpu_ids) == 1, log[-4000:]
    assert len(all_ids) == 3 and len(set(all_ids)) == 3, all_ids

    # The plugin kept its per-job SLURM logs (profile: keep successful logs).
    slurm_logs = list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) >= 3, slurm_logs

    # The controller (MinJobAge=3600 keeps finished jobs) saw the GPU job
    # complete with one GPU allocated.
    show = subprocess.run(["scontrol", "show", "job", gpu_ids[0]], env=slurm_env, capture_output=True, text=True,
                          timeout=30)
    assert show.returncode == 0, show.stderr
    assert "JobState=COMPLETED" in show.stdout, show.stdout
    assert re.search(r"TresPerJob=gres:gpu:1\b|gres/gpu=1\b", show.stdout), show.stdout
    # ...and SLURM's gpu plugin exported the (fake) device to the rule.
    assert re.search(r"^gpus=\d", (results / "gpu.txt").read_text(), flags=re.M), (
        (results / "gpu.txt").read_text()
    )
