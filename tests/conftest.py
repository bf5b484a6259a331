import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures.py

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
