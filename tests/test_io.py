import pytest
import torch

from teddy.errors import TeddyError
from teddy.io import atomic_path, load_distilled, load_torch, save_distilled, save_torch


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


def test_distilled_format_roundtrip(tmp_path):
    images, labels = torch.randn(20, 1, 28, 28), torch.arange(20) % 10
    save_distilled(tmp_path / "d.pt", images, labels, [0.286], [0.353], [str(i) for i in range(10)],
                   config={"method": "random"})
    d = load_distilled(tmp_path / "d.pt")
    assert torch.equal(d["images"], images) and torch.equal(d["labels"], labels)
    assert d["format_version"] == 1 and d["mean"] == [pytest.approx(0.286)]
