import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures.py
sys.path.insert(0, str(Path(__file__).parent / "slurm"))  # tests/slurm/local_slurm.py

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def fmnist_root(tmp_path):
    from fixtures import write_fashion_mnist

    return write_fashion_mnist(tmp_path / "fmnist")


@pytest.fixture
def one_thread():
    """Tiny models: many small ops, where a second (shared) thread only adds synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """A private one-node SLURM cluster (tests/slurm/local_slurm.py), started once per test
    session for every test that asks for it; yields the environment its clients run under.
    Skips, saying why, where SLURM cannot run (see tests/slurm/install_slurm.sh)."""
    from local_slurm import SlurmUnavailable, local_slurm_cluster

    cluster = local_slurm_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        env = cluster.__enter__()
    except SlurmUnavailable as exc:
        pytest.skip(f"local SLURM unavailable: {exc}")
    try:
        yield env
    finally:
        cluster.__exit__(None, None, None)
