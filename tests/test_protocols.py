"""Evaluation protocols as data (config/protocols/, teddy.protocols): every shipped file validates,
bad files and bad names stop in one line, the DC benchmark's student and schedule are what its
code runs (instance norm per sample, lr step with a fresh optimiser), a KD protocol's loss form."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from fixtures import REPO

from teddy.config import load_config
from teddy.data import TensorImageDataset
from teddy.errors import TeddyError
from teddy.losses import kd_loss
from teddy.models import build_model
from teddy.protocols import cell_recipe, cells, class_batch_size, known_protocols, load_protocol, whole_set_recipe
from teddy.published import load_published
from teddy.recipes import lr_factor
from teddy.train import fit

SHIPPED = known_protocols()


def demo() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_the_shipped_protocols_are_there_and_valid():
    assert {"dc", "dc_mnist", "dsa", "sre2l_imagenet1k", "sre2l_tiny_imagenet", "rded", "rded_factor1", "gvbsm_imagenet1k",
            "edc_imagenet1k", "teddy_small_kd", "teddy_small_hard"} <= set(SHIPPED)
    for name in SHIPPED:
        protocol = load_protocol(name)
        assert protocol["name"] == name and protocol["source"]["code"] and protocol["runs"] >= 1
        assert protocol["labels"] in ("hard", "kd")


def test_every_shipped_published_row_names_a_known_protocol():
    table = load_published(REPO / "config" / "published")
    assert table["protocol"].notna().all() and len(table) > 0
    assert set(table.loc[(table["dataset"] == "fashion_mnist") & (table["method"] == "random"), "protocol"]) == {"dc"}


def _write(folder, name, protocol):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(protocol))


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("recipe"), r"key \(top level\): 'recipe' is a required property"),
    (lambda p: p.update(colour="red"), r"'colour' was unexpected"),
    (lambda p: p["recipe"].update(lr=-1), r"key recipe\.lr"),
    (lambda p: p.update(labels="soft"), r"key labels"),
    (lambda p: p.update(name="other"), r"key name is 'other', expected the file's stem 'broken'"),
    (lambda p: p.update(teachers={"archs": ["convnet"]}), r"key teachers needs labels: kd"),
    (lambda p: p.update(teachers={"archs": []}), r"key teachers\.archs"),
    (lambda p: p.update(teachers={"archs": ["convnet"], "combine": "max"}), r"key teachers\.combine"),
    (lambda p: p["recipe"].update(kd_loss="l2"), r"key recipe\.kd_loss"),
    (lambda p: p["recipe"].update(ema_decay=1.0), r"key recipe\.ema_decay"),
])
def test_a_bad_protocol_file_stops_in_one_line_naming_file_and_key(tmp_path, change, message):
    protocol = load_protocol("dc")
    change(protocol)
    protocol.setdefault("name", "broken")
    if protocol["name"] == "dc":
        protocol["name"] = "broken"
    _write(tmp_path, "broken", protocol)
    with pytest.raises(TeddyError, match=message) as err:
        load_protocol("broken", tmp_path)
    assert "\n" not in str(err.value) and "broken.yaml" in str(err.value)


def test_an_unknown_protocol_lists_the_known_ones_at_load(tmp_path):
    cfg = demo()
    cfg["evaluate"]["protocols"] = ["dcc"]
    with pytest.raises(TeddyError, match=r"unknown evaluation protocol 'dcc' \(config key evaluate\.protocols\); "
                                         r"known: .*dc, dc_mnist"):
        load_config(cfg)


def test_a_student_without_a_protocol_or_too_small_for_one_stops_at_load(tmp_path):
    cfg = demo()
    cfg["evaluate"]["protocols"] = ["dc"]  # dc evaluates its ConvNet only
    with pytest.raises(TeddyError, match="evaluate.students has 'resnet10_w16', which none of"):
        load_config(cfg)
    cfg = demo()
    cfg["evaluate"].update(protocols=["dc"], students=["convnet"])
    cfg["arch_options"] = {"convnet": {"depth": 1, "width": 4}}  # the base model takes 4 px; dc's depth 3 does not
    cfg["dataset"] = {"name": "image_folder", "root": str(tmp_path / "absent"), "image_size": 4, "channels": 3}
    with pytest.raises(TeddyError, match=r"protocol 'dc': architecture 'convnet'.* needs images of at least 8x8"):
        load_config(cfg)


def test_an_ensemble_teacher_that_cannot_be_made_stops_at_load(tmp_path):
    folder = tmp_path / "protocols"
    protocol = load_protocol("teddy_small_kd")
    for name in known_protocols():
        _write(folder, name, load_protocol(name))
    cfg = demo()
    cfg["protocols_dir"] = str(folder)
    cfg["evaluate"]["protocols"] = ["ensemble"]
    _write(folder, "ensemble", {**protocol, "name": "ensemble", "teachers": {"archs": ["convnet", "vgg11"]}})
    with pytest.raises(TeddyError, match=r"protocol 'ensemble': teacher architecture 'vgg11' \(key teachers.archs\) "
                                         r"is not registered"):
        load_config(copy.deepcopy(cfg))
    _write(folder, "ensemble", {**protocol, "name": "ensemble", "teachers": {"archs": ["convnet", "resnet18"]}})
    with pytest.raises(TeddyError, match=r"protocol 'ensemble' teacher: architecture 'resnet18' needs images of at "
                                         r"least 32x32"):
        load_config(copy.deepcopy(cfg))
    _write(folder, "ensemble", {**protocol, "name": "ensemble", "teachers": {"archs": ["convnet", "resnet10_w16"]}})
    load_config(copy.deepcopy(cfg))  # both train on 28 px
    cfg["base"]["weights"] = str(tmp_path / "convnet.pt")
    with pytest.raises(TeddyError, match="base.weights is a file for 'convnet' only"):
        load_config(copy.deepcopy(cfg))


def test_the_peers_ensembles_losses_and_ema_are_recorded_where_they_are_used():
    """gvbsm/edc protocols: the ensemble is in the student jobs' settings (so a change reruns them);
    a protocol taught by the base model records no `teachers` entry (its jobs' settings unchanged)."""
    from teddy.config import fill_defaults
    from teddy.stages import stage

    cfg = fill_defaults(yaml.safe_load((REPO / "config" / "imagenet1k.yaml").read_text()))
    cfg["evaluate"]["protocols"] = ["sre2l_imagenet1k", "gvbsm_imagenet1k", "edc_imagenet1k"]
    wc = {"method": "teddy", "ipc": 10, "arch": "resnet18", "seed": 0}
    gvbsm = stage("evaluate").settings(cfg, {**wc, "protocol": "gvbsm_imagenet1k"})
    assert gvbsm["teachers"] == {"archs": ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5"],
                                 "combine": "rescaled_mean"}
    assert gvbsm["recipe"]["kd_loss"] == "mse_ce" and gvbsm["recipe"]["hard_label_weight"] == 0.1
    edc = stage("evaluate").settings(cfg, {**wc, "protocol": "edc_imagenet1k"})
    assert edc["teachers"]["combine"] == "mean" and edc["recipe"]["ema_decay"] == 0.99
    assert edc["recipe"]["batch_size"] == 100 and edc["recipe"]["augment"]["crop_scale"] == [0.5, 1.0]
    assert stage("relabel").settings(cfg, {**wc, "protocol": "edc_imagenet1k"})["teacher"] == edc["teachers"]
    sre2l = stage("evaluate").settings(cfg, {**wc, "protocol": "sre2l_imagenet1k"})
    assert "teachers" not in sre2l and "kd_loss" not in sre2l["recipe"] and "ema_decay" not in sre2l["recipe"]
    assert stage("relabel").settings(cfg, {**wc, "protocol": "sre2l_imagenet1k"})["teacher"] == "resnet18"
    base = stage("train_base").settings(cfg, {"arch": "alexnet"})
    assert base["model"]["arch"] == base["base"]["arch"] == "alexnet" and base["base"]["snapshot_epochs"] == []
    assert stage("train_base").settings(cfg, {"arch": "resnet18"})["base"] == cfg["base"]


def test_cells_pair_each_student_with_the_protocols_that_evaluate_it():
    cfg = demo()
    cfg["evaluate"]["protocols"] = ["dc", "teddy_small_kd"]
    assert cells(cfg) == [("convnet", "dc"), ("convnet", "teddy_small_kd"), ("resnet10_w16", "teddy_small_kd")]


def test_rded_batch_follows_the_ipc_and_doubles_on_many_classes():
    rded = load_protocol("rded")
    assert [cell_recipe(rded, ipc)["batch_size"] for ipc in (1, 10, 50)] == [10, 50, 100]
    recipe = cell_recipe(rded, 10)
    assert class_batch_size(recipe, 10 * 10, 10) == 50 and class_batch_size(recipe, 10 * 1000, 1000) == 100
    assert class_batch_size(cell_recipe(rded, 1), 10, 10) == 10  # capped at the set


def test_a_whole_set_schedule_scales_the_milestones():
    dc = load_protocol("dc")
    assert whole_set_recipe(dc)["milestones"] == [152]
    assert whole_set_recipe(dc, 6) | {"milestones": [3]} == whole_set_recipe(dc, 6)
    rded = load_protocol("rded")  # RDED's patch shuffling is for its synthetic mosaics, not for real images
    assert rded["recipe"]["augment"]["shuffle_patches"] == 2
    assert "shuffle_patches" not in whole_set_recipe(rded)["augment"] and whole_set_recipe(rded)["augment"]["cutmix"]
    factor1 = load_protocol("rded_factor1")["recipe"]  # RDED's CIFAR and Tiny-ImageNet scripts: factor 1
    assert "shuffle_patches" not in factor1["augment"] and factor1["augment"]["crop_scale"] == [1.0, 1.0]
    assert {k: v for k, v in factor1.items() if k != "augment"} == {k: v for k, v in rded["recipe"].items()
                                                                    if k != "augment"}


def test_instance_norm_is_per_sample():
    """The DC benchmark's student: an image's output does not depend on the rest of its batch
    (fails for BatchNorm in train mode)."""
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    for norm, independent in (("instance", True), ("batch", False)):
        model = build_model("convnet", 10, 1, 28, depth=3, width=16, norm=norm, mnist_padding=True).train()
        alone = model(x[:1])
        together = model(x)[:1]
        assert torch.allclose(alone, together, atol=1e-5) is independent, norm


def test_mnist_padding_treats_28_pixels_as_32():
    model = build_model("convnet", 10, 1, 28, **load_protocol("dc")["students"]["convnet"])
    assert model.classifier.in_features == 128 * 4 * 4
    assert model.features[0].padding == (3, 3) and model.features[4].padding == (1, 1)
    assert build_model("convnet", 10, 3, 32, width=8, mnist_padding=True).classifier.in_features == 8 * 4 * 4


def test_the_dc_schedule_steps_once_after_pass_152_with_a_fresh_optimiser():
    recipe = load_protocol("dc")["recipe"]
    factor = lr_factor(recipe, steps_per_epoch=2)
    assert [factor(s) for s in (0, 303, 304, 601)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]
    # a fresh optimiser at the milestone: the momentum buffers are dropped after epoch 2 of 3, which
    # changes the last epoch's update (and nothing when the milestone is the last epoch)
    torch.manual_seed(0)
    data = TensorImageDataset(torch.randn(6, 1, 8, 8), torch.arange(6) % 3, ["a", "b", "c"])

    def weights(**change):
        model = build_model("convnet", 3, 1, 8, depth=1, width=4, norm="instance")
        lrs = []
        fit(model, data, {**recipe, "epochs": 3, "milestones": [2], "batch_size": 6, **change}, torch.device("cpu"),
            on_epoch_end=lambda e, m, metrics: lrs.append(metrics["lr"]))
        return torch.cat([p.detach().flatten() for p in model.parameters()]), lrs

    reset, lrs = weights()
    assert lrs == [pytest.approx(0.01), pytest.approx(0.001), pytest.approx(0.001)]
    assert not torch.equal(reset, weights(reset_momentum=False)[0])
    assert torch.equal(weights(milestones=[3])[0], weights(milestones=[3], reset_momentum=False)[0])


def test_schedules_of_the_peers():
    half = lr_factor({"epochs": 300, "schedule": "half_cosine", "schedule_unit": "epoch"}, 10)
    assert half(0) == 1.0 and half(10 * 299 + 9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 299 / 600)))
    warm = lr_factor({"epochs": 100, "warmup_epochs": 5, "warmup_start_factor": 0.01, "schedule_unit": "epoch"}, 4)
    assert warm(0) == pytest.approx(0.01) and warm(4 * 5) == pytest.approx(1.0) and warm(4 * 5 + 3) == 1.0
    default = lr_factor({"epochs": 2, "warmup_epochs": 1}, 3)
    assert [default(s) for s in range(3)] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]


def test_kd_loss_with_and_without_t_squared():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert kd_loss(s, t, 20.0).item() == pytest.approx(400 * kd_loss(s, t, 20.0, t_squared=False).item(), rel=1e-5)
    assert load_protocol("sre2l_imagenet1k")["recipe"]["kd_t_squared"] is False
    assert load_protocol("sre2l_tiny_imagenet")["recipe"].get("kd_t_squared", True) is True


def test_weight_decay_skip_1d_exempts_biases_and_norms():
    from teddy.recipes import make_optimizer

    model = build_model("convnet", 10, 1, 28, depth=1, width=4, norm="instance")
    opt = make_optimizer(model.parameters(), {"lr": 0.1, "weight_decay": 0.01, "optimizer": "adamw",
                                               "weight_decay_skip_1d": True})
    decayed, exempt = opt.param_groups
    assert all(p.ndim > 1 for p in decayed["params"]) and decayed["weight_decay"] == 0.01
    assert all(p.ndim <= 1 for p in exempt["params"]) and exempt["weight_decay"] == 0.0


def test_protocol_files_are_recorded_in_the_stage_settings(tmp_path):
    """A changed protocol file changes the settings of its jobs (so Snakemake reruns them)."""
    from teddy.config import fill_defaults
    from teddy.stages import stage

    folder = tmp_path / "protocols"
    for name in ("teddy_small_kd",):
        _write(folder, name, load_protocol(name))
    cfg = fill_defaults(copy.deepcopy(demo()))
    cfg["protocols_dir"] = str(folder)
    wc = {"method": "teddy", "ipc": 1, "arch": "convnet", "protocol": "teddy_small_kd", "seed": 0}
    before = stage("evaluate").settings(cfg, wc)
    changed = load_protocol("teddy_small_kd", folder)
    changed["recipe"]["lr"] = 0.02
    _write(folder, "teddy_small_kd", changed)
    after = stage("evaluate").settings(cfg, wc)
    assert before["recipe"]["lr"] == 0.01 and after["recipe"]["lr"] == 0.02


def test_protocol_names_live_in_the_protocol_files_only():
    """No protocol's name is written in the package's code: which protocols exist, and which come
    nearest to which (the tables' closest_protocol), are the files' (config/protocols/, named/)."""
    import ast
    from pathlib import Path

    from teddy.methods import METHODS
    from teddy.protocols import PROTOCOLS_DIR, closest_protocols, known_protocols, named_protocols

    names = set(known_protocols()) | set(named_protocols())
    # the same words with another meaning: method names (dc, rded) and DSA's augmentation key
    other_meaning = set(METHODS) | {"dsa"}
    src = Path(__file__).resolve().parents[1] / "src" / "teddy"
    written = [(p.name, node.lineno, node.value) for p in src.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.Constant) and node.value in names - other_meaning]
    assert written == []
    closest = closest_protocols()
    assert closest["mtt"] == ["dsa", "dc"] and closest["teddy_small_hard"] == ["teddy_small_kd"]
    assert all(set(c) <= names for c in closest.values()), "a closest list names an unknown protocol"
    assert (PROTOCOLS_DIR / "named" / "mtt.yaml").is_file()
