"""Pretrained base models (base.weights): loaded from a file the test writes (no network), the
torchvision hub cache path named when the file is missing, and wrong weights refused in one line."""

import copy

import pytest
import torch
from fixtures import write_fashion_mnist

from teddy.config import check_config
from teddy.errors import TeddyError
from teddy.io import load_json
from teddy.job_files import Files
from teddy.models import build_model
from teddy.pool import load_model
from teddy.pretrained import hub_file, load_pretrained
from teddy.stages import run_stage

pytestmark = pytest.mark.usefixtures("one_thread")


def convnet(seed):
    torch.manual_seed(seed)
    return build_model("convnet", 10, 1, 28, depth=2, width=8)


def cfg_for(data_root, weights):
    return {"dataset": {"name": "fashion_mnist", "root": str(data_root), "val_fraction": 0.0}, "device": "cpu",
            "arch_options": {"convnet": {"depth": 2, "width": 8}},
            "base": {"arch": "convnet", "weights": str(weights), "recipe": {"epochs": 1, "batch_size": 8, "lr": 0.1}},
            "pools": {}, "distill": {"ipc": [1], "methods": {"random": {"method": "random"}}},
            "evaluate": {"students": ["convnet"], "seeds": [0], "protocols": ["teddy_small_kd"]}}


@pytest.mark.parametrize("form", ["state_dict", "checkpoint", "data_parallel"])
def test_state_dict_saved_by_the_test_is_the_teacher(tmp_path, form):
    source = convnet(7)
    state = source.state_dict()
    payload = {"state_dict": state, "epoch": 3} if form == "checkpoint" else \
        {f"module.{k}": v for k, v in state.items()} if form == "data_parallel" else state
    torch.save(payload, tmp_path / "teacher.pth")
    model = convnet(0)
    assert not torch.equal(model.classifier.weight, source.classifier.weight)
    load_pretrained(model, "convnet", str(tmp_path / "teacher.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))


def test_train_base_with_weights_only_evaluates(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    teacher = convnet(3)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    out = tmp_path / "base"
    metrics = run_stage("train_base", cfg_for(data, tmp_path / "teacher.pth"), {"arch": "convnet"}, Files(),
                        Files(model=out / "model.pt", metrics=out / "metrics.json"))
    saved = load_json(out / "metrics.json")
    assert saved["history"] == [] and saved["snapshots"] == {} and saved["weights"].endswith("teacher.pth")
    assert 0 <= metrics["test_accuracy"] <= 1 and not (out / "snapshots").exists()
    model, meta = load_model(out / "model.pt")
    assert torch.equal(model.classifier.weight, teacher.classifier.weight) and meta["weights"] == saved["weights"]


def test_missing_torchvision_weights_name_the_hub_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    path = hub_file("resnet18")
    assert path == tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(TeddyError, match=f"not found at {path}: put https://.*resnet18-f37072fd.pth there"):
        load_pretrained(build_model("resnet18", 1000), "resnet18", "torchvision")
    with pytest.raises(TeddyError, match="no pretrained weights for architecture 'convnet'"):
        hub_file("convnet")


def test_weights_of_another_architecture_or_class_count_are_refused(tmp_path):
    torch.save(build_model("resnet18", 1000).state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(TeddyError, match=r"do not fit 'resnet18'.*fc.weight is \(1000, 512\) in the file, "
                                         r"\(10, 512\) in the model"):
        load_pretrained(build_model("resnet18", 10), "resnet18", str(tmp_path / "imagenet.pth"))
    with pytest.raises(TeddyError, match="not those of architecture 'mobilenet_v2'"):
        load_pretrained(build_model("mobilenet_v2", 1000), "mobilenet_v2", str(tmp_path / "imagenet.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TeddyError, match="corrupt or truncated pretrained weights"):
        load_pretrained(convnet(0), "convnet", str(tmp_path / "junk.pth"))


def test_a_prior_pool_of_a_pretrained_base_needs_its_own_run(tmp_path):
    cfg = cfg_for(tmp_path, "torchvision")
    cfg["pools"] = {"prior": {"generator": "prior", "epochs": [1, 2]}}
    with pytest.raises(TeddyError, match="give pools.prior.recipe"):
        check_config(cfg)
    cfg["pools"]["prior"]["recipe"] = {"epochs": 1, "batch_size": 8, "lr": 0.1}
    with pytest.raises(TeddyError, match="beyond its own run"):
        check_config(cfg)
    cfg["pools"]["prior"]["recipe"]["epochs"] = 2
    check_config(copy.deepcopy(cfg))
    # the first 2 epochs of a 90-epoch schedule: enough for snapshots 1 and 2, not for 3
    cfg["pools"]["prior"]["recipe"].update(epochs=90, stop_after_epoch=2)
    check_config(copy.deepcopy(cfg))
    cfg["pools"]["prior"]["epochs"] = [1, 3]
    with pytest.raises(TeddyError, match=r"asks for epoch 3, beyond its own run \(pools.prior.recipe trains 2 epochs\)"):
        check_config(copy.deepcopy(cfg))
    cfg["pools"]["prior"]["recipe"].update(epochs=2, stop_after_epoch=3)
    with pytest.raises(TeddyError, match=r"^pools.prior.recipe: recipe key stop_after_epoch=3 must lie in 1..epochs \(2\)$"):
        check_config(cfg)


def test_prior_run_keeps_the_pool_snapshots(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    cfg = cfg_for(data, "torchvision")
    cfg["pools"] = {"prior": {"generator": "prior", "epochs": [2], "recipe": {"epochs": 2, "batch_size": 20,
                                                                              "lr": 0.05}}}
    run = tmp_path / "run"
    metrics = run_stage("train_prior", cfg, {"pool": "prior"}, Files(), Files(metrics=run / "metrics.json"))
    assert list(metrics["snapshots"]) == ["2"] and len(metrics["history"]) == 2
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["epoch2.pt"]
