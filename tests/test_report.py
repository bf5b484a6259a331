import pandas as pd
import pytest

from teddy.report import accuracy_table, collect_results, markdown_pivot, runtime_table
from teddy.errors import TeddyError


def _results():
    rows = []
    for method, accs in (("teddy", [0.80, 0.82]), ("random", [0.70, 0.74])):
        for seed, acc in enumerate(accs):
            rows.append({"method": method, "ipc": 10, "arch": "convnet", "seed": seed, "test_accuracy": acc})
    rows.append({"method": "teddy", "ipc": 1, "arch": "convnet", "seed": 0, "test_accuracy": 0.5})
    return pd.DataFrame(rows)


def test_accuracy_table_mean_std_over_seeds():
    table = accuracy_table(_results()).set_index(["method", "ipc", "arch"])
    assert table.loc[("teddy", 10, "convnet"), "mean"] == pytest.approx(81.0)
    assert table.loc[("teddy", 10, "convnet"), "std"] == pytest.approx(1.41, abs=0.01)  # sample std
    assert table.loc[("random", 10, "convnet"), "seeds"] == 2
    assert table.loc[("teddy", 1, "convnet"), "std"] == 0.0  # one seed: no spread


def test_markdown_pivot_has_one_row_per_method():
    md = markdown_pivot(accuracy_table(_results()))
    lines = [l for l in md.splitlines() if l.startswith("|")]
    assert len(lines) == 2 + 2  # header, rule, two methods
    assert "81.00 ± 1.41" in md and "convnet IPC10" in md


def test_runtime_table_reads_snakemake_benchmarks(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    paths = []
    for stage, job, secs in (("distill", "teddy/ipc1", 3.0), ("distill", "teddy/ipc10", 5.0), ("evaluate", "a", 1.0)):
        p = tmp_path / "benchmarks" / stage / f"{job}.tsv"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(header + f"{secs}\t0:00:0{int(secs)}\t100.5\t1\t1\t1\t0\t0\t50\t1\n")
        paths.append(p)
    table = runtime_table(paths).set_index("stage")
    assert table.loc["distill", "jobs"] == 2 and table.loc["distill", "total_seconds"] == 8.0
    assert table.loc["distill", "max_job_seconds"] == 5.0


def test_collect_results_rejects_corrupt_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(TeddyError, match="unreadable evaluation result"):
        collect_results([bad])
