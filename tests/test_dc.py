"""The `dc` method: each part of DC's synthesis loop against its definition (docs/method.md
section 8): the loop counts per IPC, the layer distance skipping 1-d parameters, a fresh
network per outer iteration, the inner training on the synthetic set, and resuming."""

import pytest
import torch
from fixtures import killed_then_resumed

from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.methods import DistillTask
from teddy.methods import dc as dc_module
from teddy.methods import get_method
from teddy.methods.dc import dc_layer_distance, dc_loops, dc_match

INFO = DatasetInfo("toy", 3, 1, 8, (0.3,), (0.3,))
SMALL = {"method": "dc", "iterations": 3, "batch_real": 8, "batch_train": 4, "log_every": 1,
         "matching_arch_options": {"depth": 2, "width": 4, "norm": "instance"}}
pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_set(n_per_class=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    images = torch.randn(len(labels), 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1).float()
    return TensorImageDataset(images, labels, ["a", "b", "c"])


def _run(recipe, ipc=1, seed=0, checkpoint=None):
    return get_method("dc")(DistillTask(_toy_set(), INFO, None, ipc, recipe, seed=seed, checkpoint_path=checkpoint))


def test_loop_counts_follow_dcs_get_loops():
    assert [dc_loops(ipc) for ipc in (1, 10, 20, 30, 40, 50)] == [(1, 1), (10, 50), (20, 25), (30, 20), (40, 15),
                                                                  (50, 10)]
    assert dc_loops(7, 3, 2) == (3, 2) and dc_loops(10, None, 5) == (10, 5)
    with pytest.raises(TeddyError, match="outer_loop and inner_loop"):
        dc_loops(7)


def test_layer_distance_is_dcs_per_unit_cosine_and_skips_1d_parameters():
    g = torch.Generator().manual_seed(0)
    s, r = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    s2, r2 = s.reshape(4, -1), r.reshape(4, -1)
    by_hand = sum(1 - float(s2[i] @ r2[i]) / (float(s2[i].norm()) * float(r2[i].norm()) + 1e-6) for i in range(4))
    assert float(dc_layer_distance(s, r)) == pytest.approx(by_hand, rel=1e-5)
    assert float(dc_layer_distance(s, s)) == pytest.approx(0, abs=1e-4)
    assert float(dc_layer_distance(s, -s)) == pytest.approx(8, rel=1e-4)  # 2 per output unit
    bias = torch.randn(4, generator=g)
    assert float(dc_layer_distance(bias, -bias)) == 0  # biases and normalisation count zero
    assert float(dc_match([s, bias], [r, -bias])) == pytest.approx(by_hand, rel=1e-5)


def test_a_fresh_matching_network_per_outer_iteration_and_inner_training_between_steps(monkeypatch):
    nets, inner = [], []
    fresh, train = dc_module.matching_network, dc_module._train_on_synthetic

    def record_fresh(task, recipe, generator):
        net = fresh(task, recipe, generator)
        nets.append([p.detach().clone() for p in net.parameters()])
        assert net.training  # DC's matching network is in train mode
        return net

    def record_train(model, optimizer, images, labels, epochs, batch_size, generator):
        inner.append((epochs, len(labels)))
        return train(model, optimizer, images, labels, epochs, batch_size, generator)

    monkeypatch.setattr(dc_module, "matching_network", record_fresh)
    monkeypatch.setattr(dc_module, "_train_on_synthetic", record_train)
    result = _run({**SMALL, "outer_loop": 3, "inner_loop": 2}, ipc=2)
    assert len(nets) == SMALL["iterations"]  # one new network per outer iteration
    assert not torch.equal(nets[0][0], nets[1][0])  # ... freshly initialised each time
    # the network trains on the synthetic set after every matching step but the last
    assert inner == [(2, 6)] * (SMALL["iterations"] * 2)
    assert result.images.shape == (6, 1, 8, 8) and result.labels.tolist() == [0, 0, 1, 1, 2, 2]
    nets.clear(), inner.clear()
    _run(SMALL, ipc=1)  # IPC 1: DC's (1, 1): one matching step, no inner training
    assert len(nets) == SMALL["iterations"] and inner == []


def test_the_images_move_from_their_initialisation_and_the_run_is_seeded():
    start = _run({**SMALL, "iterations": 1, "lr": 1e-12}).images
    moved = _run(SMALL).images
    assert not torch.allclose(start, moved, atol=1e-4)
    assert torch.equal(moved, _run(SMALL).images) and not torch.equal(moved, _run(SMALL, seed=1).images)
    real = _run({**SMALL, "init": "real", "iterations": 1, "lr": 1e-12})
    pool = _toy_set().images
    assert all(any(torch.allclose(img, p, atol=1e-5) for p in pool) for img in real.images)


def test_the_loop_shows_its_progress_on_stderr(capsys):
    _run(SMALL)
    err = capsys.readouterr().err
    assert "dc ipc1" in err and f"{SMALL['iterations']}/{SMALL['iterations']}" in err and "loss=" in err


def test_a_killed_dc_job_resumes_to_the_same_images(tmp_path, monkeypatch):
    recipe = {**SMALL, "iterations": 4, "checkpoint_every": 1, "outer_loop": 2, "inner_loop": 1}
    whole = _run(recipe, ipc=2)
    # a fresh matching network per iteration: dies at the start of the third
    resumed = killed_then_resumed(lambda ckpt: _run(recipe, ipc=2, checkpoint=ckpt), dc_module, "matching_network",
                                  3, tmp_path / "distill.ckpt", monkeypatch)
    assert torch.equal(resumed.images, whole.images)
    assert [h["iteration"] for h in resumed.log["history"]] == [h["iteration"] for h in whole.log["history"]]


def test_a_dc_job_is_costed_by_the_real_batches_it_reads():
    """DC's iteration reads batch_real real images per class (twice through the network, plus the
    synthetic second-order pass): costed by its own work, not by its 10 synthetic images."""
    import yaml
    from fixtures import REPO

    from teddy.config import load_config
    from teddy.machine import machine_from_config
    from teddy.stages import stage

    cfg = load_config(yaml.safe_load((REPO / "config" / "dc_reproduction.yaml").read_text()))
    cfg["distill"]["methods"]["random"] = {"method": "random"}
    mod, machine = stage("distill"), machine_from_config(cfg)
    cost = {name: mod.resources(mod.settings(cfg, {"method": name, "ipc": 1, "shard": 0}), 1, machine)["runtime"]
            for name in ("dc", "random")}
    assert cost["dc"] > 150 > cost["random"]  # measured: about 2.5 h on 2 CPU threads
    assert dc_module.dc_work({"batch_real": 256}, 1, 10) == 3 * 10 * 257
    assert dc_module.dc_work({"batch_real": 256}, 10, 10) == 10 * 10 * 3 * 266 + 9 * 50 * 100
