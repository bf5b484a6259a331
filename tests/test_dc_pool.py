"""The `dc_pool` method: DC's recipe with a pool built once and real gradients cached once per
(member, class); the loop only moves the synthetic images (docs/method.md section 8)."""

import pytest
import torch
from fixtures import killed_then_resumed

from teddy.errors import TeddyError
from teddy.methods import DistillTask, full_recipe, get_method
from teddy.methods import dc_pool as dc_pool_module
from teddy.methods import teddy as teddy_module

from test_dc import INFO, _toy_set

SMALL = {"method": "dc_pool", "iterations": 4, "batch_real": 8, "log_every": 1, "pool_size": 3, "prior_steps": 2,
         "matching_arch_options": {"depth": 2, "width": 4, "norm": "instance"}}
pytestmark = pytest.mark.usefixtures("one_thread")


def _run(recipe, ipc=1, seed=0, checkpoint=None):
    return get_method("dc_pool")(DistillTask(_toy_set(), INFO, None, ipc, recipe, seed=seed,
                                             checkpoint_path=checkpoint))


def _spy_pool(monkeypatch):
    """Record every pool built and every real-gradient computation (create_graph False)."""
    pools, real_passes = [], []
    build, grads = dc_pool_module.build_matching_pool, teddy_module.class_gradients

    def record_build(task, recipe, generator):
        pool = build(task, recipe, generator)
        pools.append((pool, [[p.detach().clone() for p in m.parameters()] for m in pool.members]))
        return pool

    def record_grads(model, x, label, create_graph):
        if not create_graph:
            real_passes.append((id(model), label, x.shape[0]))
        return grads(model, x, label, create_graph)

    monkeypatch.setattr(dc_pool_module, "build_matching_pool", record_build)
    monkeypatch.setattr(teddy_module, "class_gradients", record_grads)
    return pools, real_passes


@pytest.mark.parametrize("kind", ["random", "prior"])
def test_the_pool_is_built_once_and_each_real_gradient_computed_once(monkeypatch, kind):
    pools, real_passes = _spy_pool(monkeypatch)
    result = _run({**SMALL, "pool_kind": kind, "outer_loop": 2}, ipc=2)
    assert len(pools) == 1 and len(pools[0][0]) == SMALL["pool_size"]
    # one real gradient per (member, class), from batch_real real images, whatever the iterations
    assert sorted((m, c) for m, c, _ in real_passes) == sorted(
        (id(m), c) for m in pools[0][0].members for c in range(3))
    assert {n for _, _, n in real_passes} == {SMALL["batch_real"]}
    # nothing is trained inside the loop: the members end as they were built
    for member, before in zip(pools[0][0].members, pools[0][1]):
        assert all(torch.equal(p, q) for p, q in zip(member.parameters(), before))
    assert result.images.shape == (6, 1, 8, 8) and result.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert result.log["pool"] == [f"{kind}{i}" for i in range(3)]
    assert result.log["seconds"] >= result.log["pool_seconds"] > 0


def test_random_members_are_distinct_inits_and_prior_members_are_trained():
    task = DistillTask(_toy_set(), INFO, None, 1, full_recipe({**SMALL, "pool_kind": "random"}))
    random_pool = dc_pool_module.build_matching_pool(task, task.recipe, torch.Generator().manual_seed(0))
    first = [next(m.parameters()) for m in random_pool.members]
    assert not torch.equal(first[0], first[1])
    prior_pool = dc_pool_module.build_matching_pool(task, {**task.recipe, "pool_kind": "prior"},
                                                    torch.Generator().manual_seed(0))
    # the same seeds, then prior_steps of SGD on real batches: the weights moved from the init
    assert not torch.equal(next(prior_pool.members[0].parameters()), first[0])


def test_the_images_move_and_the_run_is_seeded():
    start = _run({**SMALL, "iterations": 1, "lr": 1e-12}).images
    moved = _run(SMALL).images
    assert not torch.allclose(start, moved, atol=1e-4)
    assert torch.equal(moved, _run(SMALL).images) and not torch.equal(moved, _run(SMALL, seed=1).images)


def test_a_killed_dc_pool_job_resumes_to_the_same_images(tmp_path, monkeypatch, capsys):
    recipe = {**SMALL, "iterations": 5, "checkpoint_every": 1, "outer_loop": 2}
    whole = _run(recipe, ipc=2)
    # 2 steps x 3 classes per iteration: dies inside the fourth iteration
    capsys.readouterr()
    resumed = killed_then_resumed(lambda ckpt: _run(recipe, ipc=2, checkpoint=ckpt), dc_pool_module, "dc_match",
                                  2 * 3 * 3 + 1, tmp_path / "distill.ckpt", monkeypatch)
    # the progress bar counts from where the resumed run starts, up to the end
    err = capsys.readouterr().err.split("resuming dc_pool from", 1)[1]
    assert "dc_pool ipc2:  60%" in err and "5/5" in err
    assert torch.equal(resumed.images, whole.images)
    assert [h["iteration"] for h in resumed.log["history"]] == [h["iteration"] for h in whole.log["history"]]


def test_bad_pool_settings_fail_with_their_key():
    with pytest.raises(TeddyError, match="pool_kind"):
        _run({**SMALL, "pool_kind": "post"})
    with pytest.raises(TeddyError, match="pool_size"):
        _run({**SMALL, "pool_size": 0})


def test_a_dc_pool_iteration_is_costed_by_its_synthetic_images_only():
    assert dc_pool_module.dc_pool_work({}, 1, 10) == 3 * 10 * 1
    assert dc_pool_module.dc_pool_work({}, 10, 10) == 10 * 10 * 3 * 10
