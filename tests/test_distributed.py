"""Two gloo processes train the same student as one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from teddy.data import TensorImageDataset
from teddy.models import build_model
from teddy.train import fit, targets_for

CPU = torch.device("cpu")
# stated tolerance: float32 sums in another order (gradients all-reduced across processes)
ATOL = 1e-5
RECIPE = {"epochs": 4, "batch_size": 10, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "temperature": 4.0,
          "hard_label_weight": 0.5, "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 1}}


def _data():
    torch.manual_seed(0)
    return TensorImageDataset(torch.randn(25, 1, 16, 16), torch.arange(25) % 5, list("abcde"))


def _models():
    torch.manual_seed(1)
    teacher = build_model("convnet", 5, 1, 16, depth=1, width=8, norm="none").eval()
    torch.manual_seed(2)
    # no BatchNorm: its statistics are per process (as with gradient accumulation), the rest is the same sum
    return teacher, build_model("convnet", 5, 1, 16, depth=2, width=6, norm="none")


def _worker(rank, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        teacher, student = _models()
        history = fit(student, _data(), RECIPE, CPU, seed=3, targets=targets_for(teacher))
        if rank == 0:
            torch.save({"history": history, "state": student.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.usefixtures("one_thread")
def test_two_gloo_processes_equal_one_process(tmp_path):
    teacher, student = _models()
    history = fit(student, _data(), RECIPE, CPU, seed=3, targets=targets_for(teacher))
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)
    assert [h["loss"] for h in ddp["history"]] == pytest.approx([h["loss"] for h in history], abs=ATOL)
    for name, value in student.state_dict().items():
        assert torch.allclose(ddp["state"][name], value, atol=ATOL), name
    # and the run really moved: not two copies of an untouched model
    assert not torch.allclose(_models()[1].state_dict()["features.0.weight"], student.state_dict()["features.0.weight"])


def test_accumulation_equals_one_big_batch():
    teacher, one = _models()
    fit(one, _data(), RECIPE, CPU, seed=3, targets=targets_for(teacher))
    _, accumulated = _models()
    fit(accumulated, _data(), {**RECIPE, "accumulate": 2}, CPU, seed=3, targets=targets_for(teacher))
    for name, value in one.state_dict().items():
        assert torch.allclose(accumulated.state_dict()[name], value, atol=ATOL), name


def test_more_gpus_than_visible_is_one_line(monkeypatch):
    from teddy.distributed import processes_for
    from teddy.errors import TeddyError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = {"gpus_per_job": 4, "evaluate": {}}
    with pytest.raises(TeddyError, match="4 processes asked .*gpus_per_job.* 1 GPUs are visible"):
        processes_for(cfg, torch.device("cuda"))
    assert processes_for(cfg, CPU) == 1  # a CPU run uses one process unless evaluate.processes says more
    assert processes_for({"gpus_per_job": 0, "evaluate": {"processes": 2}}, CPU) == 2
