
import pytest
import torch

from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.label_store import LabelStore, epoch_path, predicted_bytes_per_epoch, write_label_store
from teddy.models import build_model
from teddy.train import fit, targets_for

CPU = torch.device("cpu")
RECIPE = {"epochs": 3, "batch_size": 8, "optimizer": "adamw", "lr": 1e-2, "temperature": 4.0, "hard_label_weight": 0.5,
          "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2, "cutmix": 1.0}}
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


def _store(tmp_path, data, keep_topk=None, dtype=torch.float32, set_hash="abc"):
    meta = tmp_path / "store/meta.json"
    write_label_store(meta, data, _teacher(), RECIPE, 3, CPU, DatasetInfo("toy", 10, 1, 28, None, None), set_hash=set_hash,
                      keep_topk=keep_topk, logits_dtype=dtype)
    return meta


def _open(meta, data, set_hash="abc", keep_topk=None):
    return LabelStore(meta, set_hash=set_hash, recipe=RECIPE, seed=3, chunks=1, num_images=len(data), num_classes=10,
                      keep_topk=keep_topk)


def test_student_from_streamed_labels_equals_the_online_kd_student(tmp_path):
    data = _distilled()
    online, stored = _student(), _student()
    online_history = fit(online, data, RECIPE, CPU, seed=3, targets=targets_for(_teacher()))
    meta = _store(tmp_path, data)  # float32, every class: the same arithmetic as online
    assert sorted(p.name for p in meta.parent.iterdir()) == ["epoch0000.pt", "epoch0001.pt", "epoch0002.pt",
                                                             "meta.json"]
    stored_history = fit(stored, data, RECIPE, CPU, seed=3, targets=targets_for(label_store=_open(meta, data)))
    assert [h["loss"] for h in stored_history] == [h["loss"] for h in online_history]
    for a, b in zip(online.state_dict().values(), stored.state_dict().values()):
        assert torch.equal(a, b)


def test_a_store_holds_only_the_epochs_a_stop_after_epoch_student_trains(tmp_path):
    data, recipe = _distilled(), {**RECIPE, "stop_after_epoch": 2}
    meta = tmp_path / "store/meta.json"
    write_label_store(meta, data, _teacher(), recipe, 3, CPU, DatasetInfo("toy", 10, 1, 28, None, None), set_hash="abc",
                      logits_dtype=torch.float32)
    assert sorted(p.name for p in meta.parent.iterdir()) == ["epoch0000.pt", "epoch0001.pt", "meta.json"]
    online, stored = _student(), _student()
    online_history = fit(online, data, recipe, CPU, seed=3, targets=targets_for(_teacher()))
    store = LabelStore(meta, set_hash="abc", recipe=recipe, seed=3, chunks=1, num_images=len(data), num_classes=10)
    stored_history = fit(stored, data, recipe, CPU, seed=3, targets=targets_for(label_store=store))
    assert len(stored_history) == 2
    assert [h["loss"] for h in stored_history] == [h["loss"] for h in online_history]
    with pytest.raises(TeddyError, match="epochs=2"):  # a full-length student cannot read the short store
        _open(meta, data)


def test_top_k_fp16_store_size_matches_the_formula(tmp_path):
    data = _distilled(200)
    meta = _store(tmp_path, data, keep_topk=3, dtype=torch.float16)
    plan = torch.load(epoch_path(meta.parent, 0), weights_only=False)
    assert plan["values"].shape == (200, 3) and plan["values"].dtype == torch.float16
    measured = epoch_path(meta.parent, 0).stat().st_size
    predicted = predicted_bytes_per_epoch(200, 10, 3, crop=True, mix=True)
    assert predicted <= measured <= predicted + 8192  # container and per-batch parameters: a few kB
    student = _student()
    history = fit(student, data, RECIPE, CPU, seed=3, targets=targets_for(label_store=_open(meta, data, keep_topk=3)))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_bad_stores_are_one_line_errors(tmp_path):
    data = _distilled()
    meta = _store(tmp_path, data)
    with pytest.raises(TeddyError, match="another distilled set"):
        _open(meta, data, set_hash="other")
    with pytest.raises(TeddyError, match="keep_topk"):
        _store(tmp_path / "k", data, keep_topk=11)
    with pytest.raises(TeddyError, match="seed"):
        LabelStore(meta, set_hash="abc", recipe=RECIPE, seed=4, chunks=1, num_images=20, num_classes=10)
    other = _store(tmp_path / "o", data, set_hash="zzz")
    epoch_path(meta.parent, 1).write_bytes(epoch_path(other.parent, 1).read_bytes())
    with pytest.raises(TeddyError, match="another set"):
        fit(_student(), data, RECIPE, CPU, seed=3, targets=targets_for(label_store=_open(meta, data)))
    epoch_path(meta.parent, 1).unlink()
    with pytest.raises(TeddyError, match="epoch file missing: .*epoch0001.pt"):
        fit(_student(), data, RECIPE, CPU, seed=3, targets=targets_for(label_store=_open(meta, data)))


def test_streamed_png_set_student_from_the_store_equals_online(tmp_path):
    from teddy.data import DatasetInfo
    from teddy.distilled_set import write_images, write_meta
    from teddy.student_data import load_student_set

    data = _distilled()
    write_images(tmp_path / "set/images", data.images, data.targets, [i // 10 for i in range(20)], [0.5], [0.5])
    meta = write_meta(tmp_path / "set", method="x", ipc=2, class_names=data.class_names, mean=[0.5], std=[0.5],
                      channels=1, image_size=28, config={})
    streamed, _ = load_student_set(tmp_path / "set/meta.json", in_memory_max_mb=0)  # read by the loader, not held
    info = DatasetInfo("x", 10, 1, 28, (0.5,), (0.5,))
    online, stored = _student(), _student()
    online_history = fit(online, streamed, RECIPE, CPU, seed=3, targets=targets_for(_teacher()), info=info)
    store = tmp_path / "store/meta.json"
    write_label_store(store, streamed, _teacher(), RECIPE, 3, CPU, DatasetInfo("toy", 10, 1, 28, [0.5], [0.5]), set_hash=meta["set_hash"], logits_dtype=torch.float32)
    labels = LabelStore(store, set_hash=meta["set_hash"], recipe=RECIPE, seed=3, chunks=1, num_images=20, num_classes=10)
    stored_history = fit(stored, streamed, RECIPE, CPU, seed=3, targets=targets_for(label_store=labels), info=info)
    assert [h["loss"] for h in stored_history] == [h["loss"] for h in online_history]
