import math

import pytest
import torch

from teddy.augment import apply_augment, pixel_bounds, sample_augment_params
from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.methods import METHODS, DistillTask, get_method
from teddy.methods.base import chosen_real
from teddy.methods.bilevel import unrolled_loss
from teddy.methods.herding import herd
from teddy.methods.teddy import (check_gradient_cache, fresh_gradient_loss_fn, gradient_loss_fn, real_gradients,
                                 statistics_loss_fn)
from teddy.models import build_model
from teddy.pool import FreshModelPool, WeakPool
from teddy.shards import batch_plan, batch_seed, num_batches, shard_ranges

INFO = DatasetInfo("toy", 10, 1, 28, (0.3,), (0.3,))
TINY = {"depth": 2, "width": 8}
pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_set(n=200, seed=0):
    from fixtures import class_patterns

    images, labels = class_patterns(n, 10, 28, 1, seed)
    x = torch.from_numpy(images).float() / 255
    return TensorImageDataset((x - 0.3) / 0.3, torch.from_numpy(labels).long(), [str(i) for i in range(10)])


def _pool(n, width=8, policy="uniform"):
    members = []
    for i in range(n):
        torch.manual_seed(i)
        members.append(build_model("convnet", 10, 1, 28, depth=2, width=width))
    return WeakPool(members, [f"m{i}" for i in range(n)], policy)


BASE = {"iterations": 30, "batch_size": 100, "lr": 0.05, "log_every": 1}
OPTIMISING = {
    "teddy-statistics": ("teddy", {**BASE, "matching": "statistics"}, 2),
    "teddy-gradient": ("teddy", {**BASE, "matching": "gradient", "real_batch_per_class": 16}, 1),
    "sre2l": ("sre2l", {**BASE, "lr": 0.1, "augment": {}}, 1),
}
BILEVEL = {**BASE, "unroll_steps": 2, "inner_lr": 0.05, "real_batch_size": 64,
           "inner_arch_options": {"depth": 1, "width": 4}}


def test_every_method_is_registered():
    assert {"teddy", "random", "sre2l", "bilevel", "herding"} <= set(METHODS)


@pytest.mark.parametrize("case", sorted(OPTIMISING))
def test_optimising_methods_lower_their_own_loss(case):
    method, recipe, pool_size = OPTIMISING[case]
    result = get_method(method)(DistillTask(_toy_set(), INFO, _pool(pool_size), 2, recipe, seed=0))
    losses = [h["loss"] for h in result.log["batches"][0]["history"]]
    assert result.images.shape == (20, 1, 28, 28) and torch.isfinite(result.images).all()
    assert len(losses) == 30 and losses[-1] < losses[0]


def test_bilevel_lowers_its_own_objective():
    """Each logged bilevel loss is that of a new random model on a new real batch, too noisy to
    compare two of them; the objective is compared instead on 8 fixed (model, batch) draws."""
    real = _toy_set()

    def objective(images, labels):
        total = 0.0
        for draw in range(8):
            torch.manual_seed(100 + draw)
            model = build_model("convnet", 10, 1, 28, depth=1, width=4).train()
            idx = torch.randint(len(real), (128,))
            total += unrolled_loss(model, images, labels, real.images[idx], real.targets[idx], 2, 0.05).item()
        return total / 8

    start = get_method("random")(DistillTask(real, INFO, None, 2, {}, seed=0))  # bilevel's real init
    result = get_method("bilevel")(DistillTask(real, INFO, None, 2, BILEVEL, seed=0))
    assert torch.equal(result.labels, start.labels) and len(result.log["batches"][0]["history"]) == 30
    assert objective(result.images, result.labels) < objective(start.images, start.labels) - 0.02


@pytest.mark.parametrize("method", ["random", "herding"])
def test_selection_methods_return_real_images_of_every_class(method):
    real = _toy_set()
    result = get_method(method)(DistillTask(real, INFO, _pool(1), 3, {"method": method}, seed=0))
    assert sorted(result.labels.tolist()) == sorted(list(range(10)) * 3)
    for x, y in zip(result.images, result.labels):
        matches = (real.images == x).flatten(1).all(1).nonzero().flatten()
        assert len(matches) >= 1 and int(real.targets[matches[0]]) == int(y)


# --- teddy gradient matching ---------------------------------------------------------------

def test_gradient_matching_is_zero_when_synthetic_and_real_gradients_coincide():
    real = _toy_set(40)  # 4 images per class, fewer than real_batch_per_class: the cache uses all
    pool = _pool(1)
    cache = real_gradients(pool, real, 10, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    loss_fn = gradient_loss_fn(pool, cache)
    same, _ = loss_fn(pool.members[0], real.images, real.targets, 0)
    assert same.item() < 1e-4
    other, _ = loss_fn(pool.members[0], torch.randn_like(real.images), real.targets, 0)
    assert other.item() > 1.0


def test_fresh_gradient_matching_computes_the_real_gradients_at_the_drawn_model():
    real = _toy_set(40)  # 4 images per class, fewer than real_batch_per_class: every one is used
    loss_fn = fresh_gradient_loss_fn(real, 10, 64, seed=0)
    model = _pool(1).members[0]
    same, _ = loss_fn(model, real.images, real.targets, 0)
    assert same.item() < 1e-4
    other, _ = loss_fn(model, torch.randn_like(real.images), real.targets, 0)
    assert other.item() > 1.0
    with pytest.raises(TeddyError, match="real_batch_per_class"):
        fresh_gradient_loss_fn(real, 10, 0, seed=0)


def test_gradient_matching_with_a_fresh_pool_is_reproducible():
    real = _toy_set()
    recipe = {**BASE, "iterations": 3, "matching": "gradient", "real_batch_per_class": 4}

    def run():
        pool = FreshModelPool(lambda: build_model("convnet", 10, 1, 28, **TINY), real,
                              {"batch_size": 32, "optimizer": "sgd", "lr": 0.05}, steps=2)
        return get_method("teddy")(DistillTask(real, INFO, pool, 1, recipe, seed=0))
    first, again = run(), run()
    start = get_method("random")(DistillTask(real, INFO, None, 1, {}, seed=0))
    assert torch.isfinite(first.images).all() and not torch.equal(first.images, start.images)
    assert torch.equal(first.images, again.images)


def test_gradient_cache_that_does_not_match_the_pool_raises():
    real = _toy_set(40)
    cache = real_gradients(_pool(2), real, 10, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    check_gradient_cache(cache, _pool(2))
    with pytest.raises(TeddyError, match="pool members"):
        check_gradient_cache(cache, _pool(1))
    with pytest.raises(TeddyError, match="parameter shapes"):
        check_gradient_cache(cache, _pool(2, width=4))


def test_gradient_cache_file_is_reused_and_checked(tmp_path):
    path = tmp_path / "real_gradients.pt"
    recipe = {**BASE, "iterations": 2, "matching": "gradient", "real_batch_per_class": 4, "gradient_cache": str(path)}
    get_method("teddy")(DistillTask(_toy_set(), INFO, _pool(2), 1, recipe, seed=0))
    assert path.exists()
    with pytest.raises(TeddyError, match="gradient cache"):
        get_method("teddy")(DistillTask(_toy_set(), INFO, _pool(3), 1, recipe, seed=0))


def test_unknown_matching_form_raises():
    with pytest.raises(TeddyError, match="matching"):
        get_method("teddy")(DistillTask(_toy_set(), INFO, _pool(1), 1, {"matching": "trajectory"}))


# --- bilevel --------------------------------------------------------------------------------

def test_unroll_steps_below_one_raises():
    with pytest.raises(TeddyError, match="unroll_steps"):
        get_method("bilevel")(DistillTask(_toy_set(), INFO, None, 1, {"unroll_steps": 0}))


def test_bilevel_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = build_model("convnet", 3, 1, 8, depth=1, width=2).double().train()
    x_syn = torch.randn(6, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y_syn = torch.arange(6) % 3
    x_real, y_real = torch.randn(9, 1, 8, 8, dtype=torch.float64), torch.arange(9) % 3

    def loss(x):
        return unrolled_loss(model, x, y_syn, x_real, y_real, steps=3, inner_lr=0.5)

    (meta_grad,) = torch.autograd.grad(loss(x_syn), x_syn)
    eps = 1e-6
    for pixel in [(0, 0, 3, 4), (2, 0, 0, 7), (5, 0, 6, 1)]:
        bump = torch.zeros_like(x_syn)
        bump[pixel] = eps
        estimate = (loss(x_syn.detach() + bump).item() - loss(x_syn.detach() - bump).item()) / (2 * eps)
        assert meta_grad[pixel].item() == pytest.approx(estimate, rel=1e-4, abs=1e-8)
    assert meta_grad.abs().sum() > 0  # the outer loss does reach the pixels through the steps


# --- herding --------------------------------------------------------------------------------

def test_herding_is_deterministic_and_tracks_the_mean():
    real = _toy_set()
    recipe = {"method": "herding", "herding_candidates": 15}
    first = get_method("herding")(DistillTask(real, INFO, _pool(1), 3, recipe, seed=4))
    again = get_method("herding")(DistillTask(real, INFO, _pool(1), 3, recipe, seed=4))
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    features = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0], [0.1, 0.0], [5.0, 5.0]])
    # mean (1.02, 1): first (1, 1); then (0.1, 0), pair mean (0.55, 0.5); then (0, 0), mean (0.37, 0.33)
    assert herd(features, 3) == [1, 3, 0]
    assert sorted(herd(features, 5)) == [0, 1, 2, 3, 4]


def test_herding_and_sre2l_need_a_single_model_pool():
    for method in ("herding", "sre2l"):
        with pytest.raises(TeddyError, match="single"):
            get_method(method)(DistillTask(_toy_set(), INFO, _pool(2), 1, {"iterations": 1}))


# --- non-finite losses ----------------------------------------------------------------------

def _nan_member(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(float("nan"))
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(float("nan"))
    return model


@pytest.mark.parametrize("matching", ["statistics", "gradient"])
def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_checkpoint(tmp_path, matching):
    pool = _pool(2, policy="round_robin")  # iteration 1 draws the good member, iteration 2 the bad one
    _nan_member(pool.members[1])
    ckpt = tmp_path / "distill.ckpt"
    recipe = {**BASE, "iterations": 5, "matching": matching, "real_batch_per_class": 4, "checkpoint_every": 1}
    with pytest.raises(TeddyError, match="non-finite loss at iteration 2"):
        get_method("teddy")(DistillTask(_toy_set(), INFO, pool, 1, recipe, checkpoint_path=ckpt))
    assert ckpt.exists() and torch.load(ckpt, weights_only=False)["iteration"] == 1


def test_nan_loss_stops_sre2l_and_bilevel():
    with pytest.raises(TeddyError, match="non-finite loss at iteration 1"):
        get_method("sre2l")(DistillTask(_toy_set(), INFO, WeakPool([_nan_member(_pool(1).members[0])], ["base"]), 1,
                                        {"iterations": 3}))
    real = _toy_set()
    real.images.fill_(float("nan"))
    with pytest.raises(TeddyError, match="non-finite loss at iteration 1"):
        get_method("bilevel")(DistillTask(real, INFO, None, 1, {"iterations": 3, "unroll_steps": 1,
                                                               "inner_arch_options": TINY}))


# --- per-batch optimisation -----------------------------------------------------------------

@pytest.mark.parametrize("classes,ipc,batch,sizes", [
    (10, 10, 100, [100]),            # Fashion-MNIST default: one class-mixed batch, as before
    (10, 5, 25, [20, 20, 10]),       # two whole IPC indices per batch, the last one alone
    (100, 3, 100, [100] * 3),        # one IPC index x all classes
    (1000, 2, 100, [100] * 20),      # ImageNet-1K: one IPC index x 100 classes
    (10, 3, 4, [4, 4, 2] * 3),       # classes in chunks within one IPC index
])
def test_batch_plan_covers_every_slot_once(classes, ipc, batch, sizes):
    plan = batch_plan(classes, ipc, batch)
    assert [len(labels) for labels, _ in plan] == sizes and num_batches(classes, ipc, batch) == len(plan)
    slots = [(c, j) for labels, js in plan for c, j in zip(labels.tolist(), js.tolist())]
    assert sorted(slots) == [(c, j) for c in range(classes) for j in range(ipc)]


def test_shard_ranges_and_batch_seeds():
    assert shard_ranges(10, None) == [range(10)]
    assert shard_ranges(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert batch_seed(0, "teddy", 10, 3) == batch_seed(0, "teddy", 10, 3)  # the same in every process
    assert len({batch_seed(0, "teddy", 10, b) for b in range(50)} | {batch_seed(0, "sre2l", 10, 0)}) == 51


def test_each_batch_gets_its_own_optimiser_and_exactly_iterations_steps(monkeypatch):
    made = []

    class CountingAdam(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lrs = []
            made.append(self)

        def step(self, closure=None):
            self.lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", CountingAdam)
    recipe = {**BASE, "iterations": 7, "batch_size": 8, "lr": 0.05, "matching": "statistics"}
    result = get_method("teddy")(DistillTask(_toy_set(), INFO, _pool(1), 2, recipe, seed=0))
    n = num_batches(10, 2, 8)
    assert n == 4 and len(made) == n and len(result.log["batches"]) == n
    for opt in made:  # fresh state and a cosine schedule that starts again at lr for each batch
        assert len(opt.lrs) == 7 and opt.lrs[0] == 0.05 and opt.lrs[-1] < 0.05
    assert all(len(b["history"]) == 7 for b in result.log["batches"])
    assert result.images.shape == (20, 1, 28, 28)


def test_a_set_that_fits_one_batch_is_optimised_as_before():
    """Fashion-MNIST default (IPC x classes <= batch_size): the per-batch harness runs the very
    loop of the pre-change code (one Adam over the whole set, every step the whole set), given the
    same initial images and generator; only the seed now comes from (seed, name, IPC, batch 0)."""
    real, pool = _toy_set(), _pool(2)
    recipe = {"iterations": 12, "batch_size": 100, "lr": 0.05, "log_every": 1, "matching": "statistics",
              "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2}}
    task = DistillTask(real, INFO, pool, 3, recipe, seed=5, name="teddy")
    new = get_method("teddy")(task)

    # the pre-change whole-set loop, inline
    seed = batch_seed(5, "teddy", 3, 0)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    chosen = chosen_real(task, torch.Generator().manual_seed(5))
    syn = torch.cat([real.images[idx] for idx in chosen]).clone().requires_grad_(True)
    labels = torch.arange(10).repeat_interleave(3)
    optimizer = torch.optim.Adam([syn], lr=0.05, betas=(0.5, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / 12)))
    lo, hi = pixel_bounds(INFO)
    loss_fn = statistics_loss_fn(recipe)
    for it in range(12):
        x = apply_augment(syn, sample_augment_params(30, 28, recipe["augment"], generator))
        loss, _ = loss_fn(pool.sample(it, generator), x, labels, it)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            syn.copy_(torch.maximum(torch.minimum(syn, hi), lo))
    assert torch.equal(new.labels, labels) and torch.equal(new.images, syn.detach())


def test_result_does_not_depend_on_how_batches_are_grouped():
    real, recipe = _toy_set(), {**BASE, "iterations": 4, "batch_size": 10}
    whole = get_method("teddy")(DistillTask(real, INFO, _pool(2), 3, recipe, seed=1))
    parts = [get_method("teddy")(DistillTask(real, INFO, _pool(2), 3, recipe, seed=1, batches=r))
             for r in shard_ranges(3, 2)]
    assert torch.equal(whole.images, torch.cat([p.images for p in parts]))
    assert torch.equal(whole.index_in_class, torch.cat([p.index_in_class for p in parts]))


def test_batches_are_handed_over_and_not_kept():
    seen = []
    task = DistillTask(_toy_set(), INFO, None, 2, {"method": "random", "batch_size": 10}, seed=0,
                       on_batch=lambda b: seen.append((b.index, b.images.shape[0])))
    result = get_method("random")(task)
    assert seen == [(0, 10), (1, 10)] and result.images.shape[0] == 0


def test_batch_beyond_the_set_is_one_line():
    with pytest.raises(TeddyError, match="batch 5 is beyond the set"):
        get_method("random")(DistillTask(_toy_set(), INFO, None, 2, {"batch_size": 10}, batches=[5]))
