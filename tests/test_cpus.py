"""CPUs per job under a per-GPU cap (teddy.cpus), and the running job's share of them (job_machine)."""

from types import SimpleNamespace

from teddy.cpus import cpu_split, fit_workers
from teddy.machine import Machine, job_machine


def test_cpu_jobs_and_jobs_under_the_cap_keep_their_threads_and_workers():
    assert cpu_split(16, 16, 0, 16) == (16, 16)  # a CPU job: no cap
    assert cpu_split(4, 4, 1, 16) == (4, 4)  # under the cap
    assert cpu_split(16, 16, 1, None) == (16, 16)  # no cap configured
    assert cpu_split(16, 16, 2, 16) == (16, 16)  # two GPUs: twice the cap


def test_a_gpu_job_above_the_cap_is_scaled_down_in_proportion():
    assert cpu_split(16, 16, 1, 16) == (8, 8)
    assert cpu_split(8, 16, 1, 16) == (5, 11)
    assert cpu_split(40, 0, 1, 16) == (16, 0)
    assert cpu_split(1, 30, 1, 4) == (1, 3)  # at least one thread
    for threads, workers in [(16, 16), (8, 16), (3, 40), (32, 1)]:
        t, w = cpu_split(threads, workers, 1, 12)
        assert t + w <= 12 and t >= 1 and w == fit_workers(t, workers, 1, 12)


def test_the_running_job_uses_the_workers_that_fit_beside_its_threads():
    machine = Machine(num_workers=16, student_workers=6)
    assert job_machine(machine, 8, 16) == Machine(num_workers=8, student_workers=6)
    assert job_machine(machine, 16, 16) == Machine(num_workers=0, student_workers=0)
    assert job_machine(machine, 2, None) is machine  # no request known: as configured


def test_the_runner_gives_the_job_its_fitted_machine(tmp_path):
    import torch

    from teddy import runner

    before = torch.get_num_threads()
    log = tmp_path / "job.log"
    job = SimpleNamespace(log=[str(log)], threads=4, rule="evaluate", resources=SimpleNamespace(cpus_per_task=6),
                          params=SimpleNamespace(machine=Machine(num_workers=16, student_workers=16)))
    with runner.stage(job) as machine:
        assert (machine.num_workers, machine.student_workers) == (2, 2)
    job.resources.cpus_per_task = 3  # granted fewer CPUs than threads: the threads follow the grant
    try:
        with runner.stage(job) as machine:
            assert torch.get_num_threads() == 3 and machine.num_workers == 0
    finally:
        torch.set_num_threads(before)  # the runner sets the process's threads; later tests keep theirs
