import copy

import pytest
import torch

from teddy.data import TensorImageDataset, apply_augment
from teddy.errors import TeddyError
from teddy.models import build_model
from teddy.relabel import precompute_soft_labels
from teddy.train import train_model

CPU = torch.device("cpu")
RECIPE = {"epochs": 3, "batch_size": 8, "optimizer": "adamw", "lr": 1e-2, "temperature": 4.0,
          "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2}}
pytestmark = pytest.mark.usefixtures("one_thread")


def _distilled(n=20):
    torch.manual_seed(0)
    return TensorImageDataset(torch.randn(n, 1, 28, 28), torch.arange(n) % 10, [str(i) for i in range(10)])


def _teacher():
    torch.manual_seed(1)
    return build_model("convnet", 10, 1, 28, depth=2, width=8).eval()


def _student():
    torch.manual_seed(2)
    return build_model("convnet", 10, 1, 28, depth=1, width=4)


def test_stored_logits_are_the_online_teachers_on_the_same_augmented_batches():
    data, teacher = _distilled(), _teacher()
    online_inputs, online_logits = [], []

    def record(module, inputs, output):
        online_inputs.append(inputs[0].clone())
        online_logits.append(output.clone())
    teacher.register_forward_hook(record)
    train_model(_student(), data, RECIPE, CPU, seed=3, teacher=teacher)
    store = precompute_soft_labels(data.images, _teacher(), RECIPE, seed=3, device=CPU)
    stored = [entry for epoch in store["batches"] for entry in epoch]
    assert len(stored) == len(online_logits) == 3 * 3  # 3 epochs of ceil(20 / 8) batches
    for entry, x, logits in zip(stored, online_inputs, online_logits):
        assert entry["logits"].dtype == torch.float16
        assert torch.allclose(apply_augment(data.images[entry["indices"]], entry["augment"]), x)
        assert torch.allclose(entry["logits"].float(), logits, rtol=2e-3, atol=2e-3)


def test_student_from_the_store_needs_no_teacher_and_matches_the_online_student():
    data = _distilled()
    online, stored = _student(), _student()
    online_history = train_model(online, data, RECIPE, CPU, seed=3, teacher=_teacher())
    # float32 logits: the two runs then do exactly the same arithmetic
    store = precompute_soft_labels(data.images, _teacher(), RECIPE, seed=3, device=CPU, logits_dtype=torch.float32)
    stored_history = train_model(stored, data, RECIPE, CPU, seed=3, soft_label_store=store)
    assert [h["loss"] for h in stored_history] == pytest.approx([h["loss"] for h in online_history], rel=1e-6)
    for a, b in zip(online.state_dict().values(), stored.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_store_for_another_run_is_refused():
    data = _distilled()
    store = precompute_soft_labels(data.images, _teacher(), RECIPE, seed=3, device=CPU)
    cases = [({**RECIPE, "epochs": 4}, 3, data, "epochs"), (RECIPE, 4, data, "seed"),
             ({**RECIPE, "augment": {}}, 3, data, "augment"), (RECIPE, 3, _distilled(21), "num_images")]
    for recipe, seed, train_set, key in cases:
        with pytest.raises(TeddyError, match=key):
            train_model(_student(), train_set, recipe, CPU, seed=seed, soft_label_store=store)
    other = copy.deepcopy(data)
    other.images[0, 0, 0, 0] += 1
    with pytest.raises(TeddyError, match="other distilled images"):
        train_model(_student(), other, RECIPE, CPU, seed=3, soft_label_store=store)


def test_relabel_and_evaluate_stages_with_stored_labels(tmp_path, fmnist_root):
    from teddy import stages
    from fixtures import write_png_set
    from teddy.io import load_torch
    from teddy.pool import save_model

    cfg = {"dataset": {"name": "fashion_mnist", "root": str(fmnist_root)}, "device": "cpu",
           "arch_options": {"convnet": {"depth": 1, "width": 4}},
           "evaluate": {"labels": "stored", "recipe": {**RECIPE, "batch_size": 256}}}
    data = _distilled()
    meta = write_png_set(tmp_path / "set", data.images, data.targets, [0.3], [0.3], data.class_names, ipc=2)
    save_model(tmp_path / "teacher.pt", _teacher(), {})
    stages.relabel(cfg, 0, meta, tmp_path / "teacher.pt", tmp_path / "soft_labels_seed0.pt")
    assert load_torch(tmp_path / "soft_labels_seed0.pt")["batch_size"] == 20  # capped like the student's
    result = stages.evaluate(cfg, "m", 2, "convnet", 0, meta, tmp_path / "missing_teacher.pt",
                             tmp_path / "eval.json", soft_labels_path=tmp_path / "soft_labels_seed0.pt")
    assert result["labels"] == "stored" and 0 <= result["test_accuracy"] <= 1
    with pytest.raises(TeddyError, match="stored"):
        stages.evaluate(cfg, "m", 2, "convnet", 0, meta, tmp_path / "teacher.pt",
                        tmp_path / "eval2.json")
