"""Stacked synthetic batches (recipe key `stack`, teddy.methods.base.optimise_stack): G batches of
a job optimised together, one forward per distinct pool member drawn at each step. The set must
not depend on G: each batch keeps its generator, augmentation and pool draws, Adam state,
schedule, BN-statistics term over its own images and clipping."""

from __future__ import annotations

import pytest
import torch

from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.methods import DistillTask, get_method
from teddy.methods.base import run_batches
from teddy.methods.teddy import statistics_loss_fn
from teddy.models import build_model
from teddy.pool import WeakPool
from teddy.shards import num_batches, shard_ranges

INFO = DatasetInfo("toy", 10, 1, 28, (0.3,), (0.3,))
AUG = {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2}
# IPC 4 at batch 10: four batches of ten, each a different IPC index of all ten classes
RECIPE = {"method": "teddy", "matching": "statistics", "iterations": 12, "batch_size": 10, "lr": 0.05,
          "ce_weight": 0.5, "log_every": 4, "augment": AUG}
IPC = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_set(n=120, seed=0):
    from fixtures import class_patterns

    images, labels = class_patterns(n, 10, 28, 1, seed)
    x = torch.from_numpy(images).float() / 255
    return TensorImageDataset((x - 0.3) / 0.3, torch.from_numpy(labels).long(), [str(i) for i in range(10)])


def _pool(n=2, policy="uniform"):
    members = []
    for i in range(n):
        torch.manual_seed(i)
        members.append(build_model("convnet", 10, 1, 28, depth=2, width=8))
    return WeakPool(members, [f"m{i}" for i in range(n)], policy)


REAL, POOL = _toy_set(), _pool(2)


def distill(stack, batches=None, pool=POOL, **extra):
    recipe = {**RECIPE, "stack": stack, **extra}
    return get_method("teddy")(DistillTask(REAL, INFO, pool, IPC, recipe, seed=7, name="teddy", batches=batches))


def test_stack_of_four_equals_one_at_a_time_though_batches_draw_different_members(monkeypatch):
    reference = distill(1)
    groups = []  # per step of the stacked run: how many batches went through each forward
    loss = statistics_loss_fn(RECIPE)
    monkeypatch.setattr("teddy.methods.teddy.statistics_loss_fn", lambda r: _spied(loss, groups))
    stacked = distill(4)
    assert num_batches(10, IPC, 10) == 4 and stacked.images.shape == (40, 1, 28, 28)
    # the stack did share forwards, and at some steps its batches drew different members
    assert max(groups) > 1 and min(groups) < 4 and sum(groups) == 4 * 12
    assert torch.equal(stacked.labels, reference.labels)
    assert torch.equal(stacked.index_in_class, reference.index_in_class)
    assert (stacked.images - reference.images).abs().max() <= 1e-5
    for s, r in zip(stacked.log["batches"], reference.log["batches"]):
        assert [h["iteration"] for h in s["history"]] == [h["iteration"] for h in r["history"]] == [1, 4, 8, 12]
        assert [h["loss"] for h in s["history"]] == pytest.approx([h["loss"] for h in r["history"]], abs=1e-4)
    assert stacked.log["batches"][0]["stacked_with"] == [0, 1, 2, 3]


def _spied(loss, groups):
    def stacked(model, xs, ys, it):
        groups.append(len(xs))
        return loss.stacked(model, xs, ys, it)
    loss_fn = lambda *a: loss(*a)  # noqa: E731
    loss_fn.stacked = stacked
    return loss_fn


def test_the_invariance_test_fails_when_the_batches_share_one_pool_draw(monkeypatch):
    reference = distill(1)
    index = WeakPool.index
    first = {}

    def shared(self, iteration, generator):  # every batch draws (keeping its generator's stream) ...
        drawn = index(self, iteration, generator)
        return first.setdefault(iteration, drawn)  # ... but uses the first batch's member
    monkeypatch.setattr(WeakPool, "index", shared)
    wrong = distill(4)
    assert (wrong.images - reference.images).abs().max() > 1e-3


def test_one_shard_of_stack_four_equals_four_shards_of_stack_one():
    written = {}

    def run(stack, batches):
        recipe = {**RECIPE, "stack": stack}
        task = DistillTask(REAL, INFO, POOL, IPC, recipe, seed=7, name="teddy", batches=batches,
                           on_batch=lambda b: written.setdefault(stack, []).append(b))
        get_method("teddy")(task)

    run(4, range(4))  # one shard: all four batches, one stack
    for shard in shard_ranges(4, 1):  # four shards of one batch each
        run(1, shard)
    one, four = written[4], written[1]
    assert [b.index for b in one] == [b.index for b in four] == [0, 1, 2, 3]
    for a, b in zip(one, four):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.index_in_class, b.index_in_class)
        assert (a.images - b.images).abs().max() <= 1e-5


def test_stacks_follow_the_shard_in_order_and_a_short_last_stack():
    whole = distill(1)
    part = distill(3, batches=[1, 2, 3])  # one stack of three
    odd = distill(3, batches=[0, 1, 2, 3])  # a stack of three, then one of one
    assert [b["batch"] for b in odd.log["batches"]] == [0, 1, 2, 3]
    assert odd.log["batches"][3].get("stacked_with") is None
    assert (part.images - whole.images[10:]).abs().max() <= 1e-5
    assert (odd.images - whole.images).abs().max() <= 1e-5


class Crash(Exception):
    pass


def _crashing(recipe, crash_at, in_stack=1):
    """The statistics loss, raising at iteration `crash_at` of the `in_stack`-th stack (from 0)."""
    loss = statistics_loss_fn(recipe)
    seen = {"stack": -1, "last": None}

    def stacked(model, xs, ys, it):
        if seen["last"] is None or it < seen["last"]:  # a new stack starts at iteration 0
            seen["stack"] += 1
        seen["last"] = it
        if it == crash_at and seen["stack"] == in_stack:
            raise Crash
        return loss.stacked(model, xs, ys, it)
    loss_fn = lambda *a: loss(*a)  # noqa: E731
    loss_fn.stacked = stacked
    return loss_fn


def test_a_killed_stacked_job_resumes_to_the_same_images(tmp_path, capsys):
    recipe = {**RECIPE, "stack": 2, "iterations": 10, "checkpoint_every": 3}
    ckpt = tmp_path / "distill.ckpt"

    def run(batches, crash_at=None, checkpoint=ckpt):
        written = []
        task = DistillTask(REAL, INFO, POOL, IPC, {**recipe, "method": "teddy"}, seed=7, name="teddy",
                           batches=batches, checkpoint_path=checkpoint, on_batch=written.append)
        try:
            run_batches(task, _crashing(recipe, crash_at), desc="t")
        except Crash:
            pass
        return written

    reference = run(range(4), checkpoint=None)
    # killed inside the second stack (batches 2, 3) after its checkpoint at iteration 6
    first = run(range(4), crash_at=7)
    assert [b.index for b in first] == [0, 1]
    saved = torch.load(ckpt, weights_only=False)
    assert saved["iteration"] == 6 and saved["settings"]["batch"] == [2, 3] and len(saved["images"]) == 2
    assert len(saved["generator"]) == 2 and len(saved["history"]) == 2
    capsys.readouterr()
    rest = run([2, 3])  # the stage restarts with the batches not yet written
    assert "at iteration 6/10" in capsys.readouterr().err
    for got, want in zip(first + rest, reference):
        assert got.index == want.index and torch.equal(got.images, want.images)
        assert got.log["history"] == want.log["history"]


def _poisoned_after(model, forwards):
    """From its `forwards`+1-th forward on, the member's BN statistics are NaN."""
    calls = []

    def hook(module, inputs):
        calls.append(1)
        if len(calls) == forwards + 1:
            for m in module.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.fill_(float("nan"))
    model.register_forward_pre_hook(hook)
    return model


def test_nan_guard_fires_with_a_stack_naming_the_iteration_and_keeping_the_last_good_checkpoint(tmp_path):
    pool = WeakPool([_poisoned_after(_pool(1).members[0], 5)], ["m0"])  # one member: one forward per step
    ckpt = tmp_path / "distill.ckpt"
    with pytest.raises(TeddyError, match=r"non-finite loss at iteration 6 \(losses read every log_every = 4 steps: "
                                         r"iterations 5-8\), stacked batches \[0, 1, 2, 3\]; last good checkpoint"):
        get_method("teddy")(DistillTask(REAL, INFO, pool, IPC, {**RECIPE, "stack": 4, "iterations": 20, "log_every": 4,
                                                                "checkpoint_every": 4}, seed=7, name="teddy",
                                        checkpoint_path=ckpt))
    saved = torch.load(ckpt, weights_only=False)
    assert saved["iteration"] == 4 and all(torch.isfinite(x).all() for x in saved["images"])


def test_unstackable_methods_run_unstacked_whatever_the_stack():
    recipe = {**RECIPE, "matching": "gradient", "real_batch_per_class": 4, "iterations": 3}
    one = get_method("teddy")(DistillTask(REAL, INFO, POOL, 2, {**recipe, "stack": 1}, seed=7, name="teddy"))
    four = get_method("teddy")(DistillTask(REAL, INFO, POOL, 2, {**recipe, "stack": 4}, seed=7, name="teddy"))
    assert torch.equal(one.images, four.images) and "stacked_with" not in four.log["batches"][0]


def test_stack_below_one_is_one_line():
    with pytest.raises(TeddyError, match="stack must be >= 1, got 0"):
        distill(0)


def test_losses_are_read_only_every_log_every_steps(monkeypatch):
    """No host synchronisation per step: the losses stay on the device and are read (NaN guard,
    history) at iteration 1, every log_every steps and at the end, not after every step."""
    reads = []
    isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: (reads.append(tuple(t.shape)), isfinite(t))[1])
    result = distill(2, iterations=20, log_every=10, batches=[0, 1])
    assert reads == [(1, 2), (9, 2), (10, 2)]  # steps x stacked batches: iterations 1, 2-10, 11-20
    assert [h["iteration"] for h in result.log["batches"][1]["history"]] == [1, 10, 20]
