"""The efficiency table: Snakemake benchmark files per stage and method, GPU memory from logs."""

import math

import pytest

from teddy.efficiency import GPU_MEMORY_TAG, efficiency_table, job_costs, log_for_benchmark
from teddy.errors import TeddyError

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_job(root, stage, job, seconds, rss, cpu, gpu_mb=None):
    bench = root / "benchmarks" / stage / f"{job}.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    log = root / "logs" / stage / f"{job}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("training...\n" + (f"{GPU_MEMORY_TAG} {gpu_mb}\n" if gpu_mb is not None else ""))
    return bench


def test_per_stage_and_method_sums_and_peaks(tmp_path):
    paths = [write_job(tmp_path, "distill", "teddy/ipc1", 3.0, 100.0, 2.5, gpu_mb=512.5),
             write_job(tmp_path, "distill", "teddy/ipc10", 5.0, 300.0, 4.5, gpu_mb=2048.0),
             write_job(tmp_path, "distill", "random/ipc1", 1.0, 50.0, 0.5),
             write_job(tmp_path, "evaluate", "teddy/ipc1/convnet/hard/seed0", 7.0, 80.0, 6.0),
             write_job(tmp_path, "train_base", "convnet", 20.0, 900.0, 39.0)]
    table = efficiency_table(paths, ["teddy", "random"]).set_index(["stage", "method"])
    teddy = table.loc[("distill", "teddy")]
    assert teddy["jobs"] == 2 and teddy["wall_s"] == 8.0 and teddy["max_job_wall_s"] == 5.0
    assert teddy["cpu_s"] == 7.0 and teddy["peak_rss_mb"] == 300.0 and teddy["peak_gpu_mb"] == 2048.0
    assert table.loc[("distill", "random"), "jobs"] == 1
    assert table.loc[("distill", "random")].isna()["peak_gpu_mb"]  # a CPU job logs no GPU memory
    assert table.loc[("evaluate", "teddy"), "wall_s"] == 7.0
    assert table.loc[("train_base", ""), "cpu_s"] == 39.0  # not a per-method stage


def test_log_path_mirrors_the_benchmark_path(tmp_path):
    bench = tmp_path / "results" / "benchmarks" / "evaluate" / "m" / "seed0.tsv"
    assert log_for_benchmark(bench) == tmp_path / "results" / "logs" / "evaluate" / "m" / "seed0.log"


def test_unreadable_benchmark_is_named(tmp_path):
    bad = tmp_path / "benchmarks" / "distill" / "x.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("")
    with pytest.raises(TeddyError, match="unreadable benchmark file .*x.tsv"):
        job_costs([bad])


def test_every_stage_logs_its_peak_gpu_memory_and_the_table_reads_it_back(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from teddy import efficiency, runner
    from teddy.efficiency import read_peak_gpu_memory

    log = tmp_path / "logs" / "distill" / "teddy" / "ipc1.log"
    log.parent.mkdir(parents=True)
    job = SimpleNamespace(log=[str(log)], threads=1, rule="distill")
    with runner.stage(job):  # CPU: nothing to record
        print("distilling")
    assert GPU_MEMORY_TAG not in log.read_text() and math.isnan(read_peak_gpu_memory(log))
    monkeypatch.setattr(efficiency, "peak_gpu_memory_mb", lambda: 1234.5)  # as a CUDA job would report
    with runner.stage(job):
        print("distilling")
    assert read_peak_gpu_memory(log) == 1234.5
