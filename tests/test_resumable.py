"""The one resumable-state helper (teddy.resume) and the two loops that use it: the training loop
(`teddy.train.fit`) and the synthetic-image loop (`teddy.methods.base.optimise_synthetic`)."""

import pytest
import torch

import teddy.resume
from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.methods.base import DistillTask, optimise_synthetic
from teddy.methods.teddy import statistics_loss_fn
from teddy.models import build_model
from teddy.pool import WeakPool
from teddy.resume import Resumable
from teddy.train import fit

CPU = torch.device("cpu")
INFO = DatasetInfo("toy", 10, 1, 8, (0.5,), (0.5,))
pytestmark = pytest.mark.usefixtures("one_thread")


def _loop_state(lr=0.1):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return param, optimizer, scheduler, torch.Generator().manual_seed(0)


def _step(param, optimizer, scheduler, generator, draws):
    """One step of a loop that draws from its own generator and the global RNG."""
    optimizer.zero_grad()
    (param * torch.rand(3, generator=generator)).sum().backward()
    optimizer.step()
    scheduler.step()
    draws.append((torch.rand(1, generator=generator).item(), torch.rand(1).item()))


def test_save_load_restores_optimiser_schedule_generator_and_global_rng(tmp_path):
    torch.manual_seed(5)
    param, opt, sched, gen = _loop_state()
    ckpt = Resumable(tmp_path / "c.pt", {"a": 1})
    draws = []
    _step(param, opt, sched, gen, draws)
    ckpt.save(opt, sched, gen, draws, weights=param.detach().clone(), step=1)
    _step(param, opt, sched, gen, draws)
    uninterrupted = list(draws)

    param2, opt2, sched2, gen2 = _loop_state()
    state = Resumable(tmp_path / "c.pt", {"a": 1}).load(opt2, sched2, gen2)
    assert state["step"] == 1 and state["settings"] == {"a": 1}
    with torch.no_grad():
        param2.copy_(state["weights"])
    resumed = state["history"]
    _step(param2, opt2, sched2, gen2, resumed)
    assert resumed == uninterrupted and torch.equal(param2, param)


def test_a_truncated_checkpoint_falls_back_to_prev_then_starts_clean(tmp_path, capsys):
    param, opt, sched, gen = _loop_state()
    ckpt = Resumable(tmp_path / "c.pt", {"a": 1})
    ckpt.save(opt, sched, gen, [], step=1)
    ckpt.save(opt, sched, gen, [], step=2)  # step 1 kept as c.pt.prev
    assert (tmp_path / "c.pt.prev").exists()
    (tmp_path / "c.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:20])
    assert ckpt.load(opt, sched, gen)["step"] == 1
    assert "falling back to the previous checkpoint" in capsys.readouterr().err
    (tmp_path / "c.pt.prev").write_bytes(b"")
    assert ckpt.load(opt, sched, gen) is None
    assert "no usable training checkpoint" in capsys.readouterr().err


def test_a_checkpoint_of_other_settings_is_ignored(tmp_path, capsys):
    param, opt, sched, gen = _loop_state()
    Resumable(tmp_path / "c.pt", {"lr": 0.1}).save(opt, sched, gen, [], step=1)
    assert Resumable(tmp_path / "c.pt", {"lr": 0.2}).load(opt, sched, gen) is None
    assert "written under other settings; not resuming from it" in capsys.readouterr().err


def test_without_a_path_nothing_is_written_or_read(tmp_path):
    param, opt, sched, gen = _loop_state()
    ckpt = Resumable(None, {})
    ckpt.save(opt, sched, gen, [], step=1)
    assert ckpt.load(opt, sched, gen) is None and not list(tmp_path.iterdir())


def test_the_nan_guard_names_where_and_the_checkpoint_kept(tmp_path):
    guard = Resumable(tmp_path / "c.pt", {})
    guard.check_finite(torch.tensor(1.0), "loop", "epoch 1, step 1")
    with pytest.raises(TeddyError) as err:
        guard.check_finite(torch.tensor(float("inf")), "loop", "epoch 3, step 2")
    assert str(err.value) == f"loop: non-finite loss at epoch 3, step 2; last good checkpoint kept at {tmp_path / 'c.pt'}"


# --- both loops go through it --------------------------------------------------------------

def _data(n=40):
    torch.manual_seed(0)
    return TensorImageDataset(torch.randn(n, 1, 8, 8), torch.arange(n) % 10, [str(i) for i in range(10)])


def _train(path, lr=0.05):
    torch.manual_seed(1)
    model = build_model("convnet", 10, 1, 8, depth=1, width=4)
    history = fit(model, _data(), {"epochs": 3, "batch_size": 10, "lr": lr, "checkpoint_every": 1}, CPU, seed=2,
                  checkpoint_path=path)
    return history, model.state_dict()


def _distill(path, lr=0.05):
    torch.manual_seed(1)
    pool = WeakPool([build_model("convnet", 10, 1, 8, depth=1, width=4)], ["m0"])
    recipe = {"iterations": 4, "lr": lr, "checkpoint_every": 1, "log_every": 1, "augment": {"flip": True}}
    task = DistillTask(_data(), INFO, pool, 1, recipe, checkpoint_path=path)
    images, labels = _data(10).images.clone(), torch.arange(10)
    result = optimise_synthetic(task, images, labels, statistics_loss_fn(recipe), torch.Generator().manual_seed(3),
                                desc="distill")
    return result.log["history"], result.images


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("loop,what", [(_train, "training checkpoint"), (_distill, "distillation checkpoint")])
def test_both_loops_checkpoint_resume_and_skip_other_settings_through_the_helper(loop, what, tmp_path, capsys,
                                                                                 monkeypatch):
    saved = []
    save = Resumable.save
    monkeypatch.setattr(teddy.resume.Resumable, "save",
                        lambda self, *a, **k: (saved.append(self.what), save(self, *a, **k))[1])
    ckpt = tmp_path / "loop.ckpt"
    first = loop(ckpt)  # leaves its last checkpoint (a stage removes it once its outputs are written)
    assert saved and set(saved) == {what} and ckpt.exists()
    capsys.readouterr()
    assert _same(loop(ckpt), first)  # resumed from the last checkpoint: the same numbers
    assert "resuming" in capsys.readouterr().err
    other = loop(ckpt, lr=0.01)  # another recipe: the checkpoint is not resumed
    assert "written under other settings" in capsys.readouterr().err
    assert _same(other, loop(None, lr=0.01))
