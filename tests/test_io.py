import os
import stat

import pytest
import torch

from teddy.errors import TeddyError
from teddy.io import atomic_path, current_umask, load_torch, save_json, save_torch


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    save_torch({"w": torch.randn(100, 100)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(TeddyError, match="corrupt or truncated checkpoint"):
        load_torch(path)
    with pytest.raises(TeddyError, match="not found"):
        load_torch(tmp_path / "missing.pt")


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask):
    assert current_umask() == umask
    save_torch({"w": torch.zeros(2)}, tmp_path / "a.pt")
    save_json({"x": 1}, tmp_path / "a.json")
    with open(tmp_path / "plain", "w") as fh:  # what an ordinary open() gives
        fh.write("x")
    expected = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.pt", "a.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name


def test_an_interrupted_write_leaves_only_a_hidden_private_temporary(tmp_path, umask):
    """A write killed before the rename leaves at most `.name.*.tmp`: never the output's own
    name, so Snakemake cannot take it as complete."""
    target = tmp_path / "out.json"
    with atomic_path(target) as tmp:
        tmp.write_text("half")
        leftovers = list(tmp_path.iterdir())
        assert leftovers == [tmp] and tmp.name.startswith(".out.json.") and tmp.name.endswith(".tmp")
        assert not target.exists()
        assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600  # private until complete
    assert target.read_text() == "half" and list(tmp_path.iterdir()) == [target]
