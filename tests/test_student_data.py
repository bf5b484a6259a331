import pytest
import torch
import torch.nn.functional as F

from teddy.data import TensorImageDataset
from teddy.student_data import (MIX_CUTMIX, StudentData, load_student_set, mixed_cross_entropy, plan_epoch,
                                roi_crop)

CPU = torch.device("cpu")


def _set(n=16, size=16):
    torch.manual_seed(0)
    return TensorImageDataset(torch.randn(n, 3, size, size), torch.arange(n) % 4, list("abcd"))


def test_full_box_crop_is_the_identity():
    x = torch.randn(3, 2, 9, 9)
    assert torch.allclose(roi_crop(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3)), x, atol=1e-5)


def test_per_image_crops_differ_within_a_batch():
    same = torch.randn(1, 3, 16, 16).repeat(8, 1, 1, 1)
    data = TensorImageDataset(same, torch.zeros(8), ["a"])
    plan = plan_epoch(8, 8, 16, {"crop": True, "crop_scale": [0.2, 0.6], "flip": False}, torch.Generator().manual_seed(1))
    boxes = plan["boxes"]
    assert boxes.shape == (8, 4) and len({tuple(b.tolist()) for b in boxes}) == 8
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert ((areas > 0.2 - 1e-6) & (areas < 0.6 + 1e-6)).all()
    (mb,) = list(StudentData(data, 16, CPU).epoch(plan))
    flat = mb.x.flatten(1)
    # one image in, eight different crops out
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))


def test_cutmix_mixes_labels_in_proportion_to_the_pasted_area():
    n, size = 8, 16
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size).clone()
    data = TensorImageDataset(images, torch.arange(n) % 4, list("abcd"))
    plan = plan_epoch(n, n, size, {"crop": False, "flip": False, "cutmix": 1.0}, torch.Generator().manual_seed(3))
    (mb,) = list(StudentData(data, size, CPU).epoch(plan))
    assert mb.mix_kind == MIX_CUTMIX and 0 < mb.lam < 1
    value = plan["order"].float()  # image at batch position i is images[order[i]], all pixels = order[i]
    for i in range(n):
        partner = int(mb.local_perm[i])
        if partner == i:
            continue
        own = (mb.x[i] == value[i]).float().mean().item()
        assert own == pytest.approx(mb.lam, abs=1e-6)  # the share of the image that stays its own
        assert (mb.x[i] == value[partner]).float().mean().item() == pytest.approx(1 - mb.lam, abs=1e-6)
    logits = torch.randn(n, 4)
    soft = mb.lam * F.one_hot(mb.y, 4) + (1 - mb.lam) * F.one_hot(mb.y[mb.local_perm], 4)
    expected = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(mixed_cross_entropy(logits, mb.y, mb), expected, atol=1e-6)


def test_accumulation_chunks_cover_the_batch_and_mix_within_chunks():
    plan = plan_epoch(10, 10, 16, {"crop": True, "mixup": 0.4}, torch.Generator().manual_seed(0), chunks=2)
    parts = list(StudentData(_set(10), 16, CPU, accumulate=2).epoch(plan))
    assert [len(p.y) for p in parts] == [5, 5] and [p.micro for p in parts] == [0, 1]
    assert all(sorted(p.local_perm.tolist()) == list(range(5)) for p in parts)


def test_streamed_png_set_gives_the_same_batches_as_in_memory(tmp_path):
    from teddy.distilled_set import write_images, write_meta

    torch.manual_seed(0)
    images, labels = torch.rand(6, 3, 12, 12) * 2 - 1, torch.tensor([0, 0, 1, 1, 2, 2])
    write_images(tmp_path / "set/images", images, labels, [0, 1, 0, 1, 0, 1], [0.5] * 3, [0.5] * 3)
    write_meta(tmp_path / "set", method="x", ipc=2, class_names=list("abc"), mean=[0.5] * 3, std=[0.5] * 3,
               channels=3, image_size=12, config={})
    memory, _ = load_student_set(tmp_path / "set/meta.json")
    streamed, meta = load_student_set(tmp_path / "set/meta.json", in_memory_max_mb=0)
    assert isinstance(memory, TensorImageDataset) and not isinstance(streamed, TensorImageDataset)
    plan = plan_epoch(6, 4, 12, {"crop": False, "flip": True, "max_shift": 1}, torch.Generator().manual_seed(0))
    a = list(StudentData(memory, 12, CPU).epoch(plan))
    b = list(StudentData(streamed, 12, CPU, mean=meta["mean"], std=meta["std"]).epoch(plan))
    for x, y in zip(a, b):
        assert torch.equal(x.y, y.y) and torch.allclose(x.x, y.x, atol=1e-6)
    # with crops, the streamed path crops the stored image in the worker: same boxes, close pixels
    plan = plan_epoch(6, 6, 12, {"crop": True, "crop_scale": [0.5, 1.0], "flip": False}, torch.Generator().manual_seed(0))
    (a,) = StudentData(memory, 12, CPU).epoch(plan)
    (b,) = StudentData(streamed, 12, CPU, mean=meta["mean"], std=meta["std"]).epoch(plan)
    assert a.x.shape == b.x.shape and (a.x - b.x).abs().mean() < 0.3


def test_base_training_crops_folder_images_at_full_resolution(tmp_path):
    from fixtures import write_image_folder

    from teddy.data import dataset_info, load_split
    from teddy.models import build_model
    from teddy.train import fit

    root = write_image_folder(tmp_path / "tiny", per_class=4, size=96)  # larger than the 64-px training size
    cfg = {"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.0, "num_workers": 1}
    train = load_split(cfg, "train")
    info = dataset_info(cfg)
    plan = plan_epoch(len(train), 6, 64, {"crop": True, "crop_scale": [0.1, 0.2], "flip": False},
                      torch.Generator().manual_seed(0))
    first = next(StudentData(train, 64, CPU, mean=info.mean, std=info.std, num_workers=1).epoch(plan))
    assert first.x.shape == (6, 3, 64, 64)
    whole = torch.stack([train[int(i)][0] for i in plan["order"][:6]])  # the resized, uncropped images
    assert not torch.allclose(first.x, whole, atol=0.1)
    history = fit(build_model("convnet", 3, 3, 64, depth=1, width=4), train,
                  {"epochs": 1, "batch_size": 6, "lr": 0.01, "augment": {"crop": True, "flip": True}},
                  CPU, info=info)
    assert len(history) == 1 and history[0]["loss"] > 0


# --- the three placements of a distilled set: host tensors, device pixels, streamed PNGs -----

AUGMENTS = {"flip_shift": {"crop": False, "flip": True, "max_shift": 2},
            "crop": {"crop": True, "crop_scale": [0.2, 1.0], "flip": True},
            "cutmix": {"crop": True, "crop_scale": [0.3, 1.0], "flip": True, "cutmix": 1.0},
            "mixup": {"crop": True, "flip": True, "mixup": 0.4},
            "cutmix_or_mixup": {"crop": True, "flip": True, "max_shift": 1, "cutmix": 1.0, "mixup": 0.2}}


def _png_set(root, n_per_class=3, classes=3, size=12, channels=3):
    from teddy.distilled_set import write_images, write_meta

    g = torch.Generator().manual_seed(0)
    n = n_per_class * classes
    images, labels = torch.rand(n, channels, size, size, generator=g) * 2 - 1, torch.arange(n) % classes
    mean, std = [0.5, 0.4, 0.3][:channels], [0.2, 0.3, 0.25][:channels]
    write_images(root / "images", images, labels, [i // classes for i in range(n)], mean, std)
    return write_meta(root, method="x", ipc=n_per_class, class_names=[str(c) for c in range(classes)], mean=mean,
                      std=std, channels=channels, image_size=size, config={})


def _three_placements(meta_path, device=CPU):
    from teddy.distilled_set import PngSetDataset
    from teddy.student_data import PixelSet, load_set_pixels

    memory, _ = load_student_set(meta_path)
    streamed, _ = load_student_set(meta_path, in_memory_max_mb=0)
    device, _ = load_set_pixels(meta_path, device)
    assert isinstance(memory, TensorImageDataset) and isinstance(streamed, PngSetDataset)
    assert isinstance(device, PixelSet) and device.pixels.dtype == torch.uint8
    return {"memory": memory, "streamed": streamed, "device": device}


DEVICES = [CPU, pytest.param(torch.device("cuda"), marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                            reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES, ids=["cpu", "cuda"])
@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("augment", sorted(AUGMENTS))
def test_device_streamed_and_memory_paths_give_the_same_batches(tmp_path, augment, chunks, device):
    """Same plan, same crops, flips, shifts and mix partners: bit for bit on one device (on
    CUDA the set's pixels are on the GPU, the others are copied there per batch)."""
    meta = _png_set(tmp_path / "set")
    placements = _three_placements(tmp_path / "set/meta.json", device)
    plan = plan_epoch(9, 4, 12, AUGMENTS[augment], torch.Generator().manual_seed(4), chunks)
    runs = {name: list(StudentData(data, 12, device, mean=meta["mean"], std=meta["std"], accumulate=chunks)
                       .epoch(plan)) for name, data in placements.items()}
    assert all(mb.x.device.type == device.type for mbs in runs.values() for mb in mbs)
    reference = runs.pop("memory")
    assert len(reference) == (len(plan["bounds"]) - 1) * chunks
    for name, batches in runs.items():
        assert len(batches) == len(reference), name
        for a, b in zip(reference, batches):
            assert (a.step, a.micro, a.mix_kind, a.lam) == (b.step, b.micro, b.mix_kind, b.lam), name
            assert torch.equal(a.positions, b.positions) and torch.equal(a.local_perm, b.local_perm), name
            assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x), name
    if "cutmix" in augment or "mixup" in augment:
        assert any(mb.mix_kind != 0 for mb in reference)


def test_stored_labels_made_on_one_path_serve_the_other(tmp_path):
    """A store written while streaming trains the same student on the device path (and back)
    as online KD does; fit on device pixels equals fit on host tensors bit for bit."""
    from teddy.data import DatasetInfo
    from teddy.label_store import LabelStore, write_label_store
    from teddy.models import build_model
    from teddy.train import fit, targets_for

    meta = _png_set(tmp_path / "set", n_per_class=4, classes=3, channels=1, size=16)
    placements = _three_placements(tmp_path / "set/meta.json")
    info = DatasetInfo("x", 3, 1, 16, tuple(meta["mean"]), tuple(meta["std"]))
    recipe = {"epochs": 2, "batch_size": 5, "optimizer": "adamw", "lr": 1e-2, "temperature": 4.0,
              "hard_label_weight": 0.5, "augment": AUGMENTS["cutmix_or_mixup"]}

    def net(seed, depth=1):
        torch.manual_seed(seed)
        return build_model("convnet", 3, 1, 16, depth=depth, width=4)

    def run(data, **targets):
        student = net(2)
        history = fit(student, data, recipe, CPU, seed=3, targets=targets_for(**targets), info=info)
        return [h["loss"] for h in history], student.state_dict()

    teacher = net(1, depth=2).eval()
    online = {name: run(data, teacher=teacher) for name, data in placements.items()}
    for name in ("streamed", "device"):
        assert online[name][0] == online["memory"][0], name
        assert all(torch.equal(v, online[name][1][k]) for k, v in online["memory"][1].items()), name
    for made_on, used_on in (("streamed", "device"), ("device", "streamed"), ("device", "memory")):
        store = tmp_path / f"store_{made_on}_{used_on}/meta.json"
        write_label_store(store, placements[made_on], teacher, recipe, 3, CPU, set_hash=meta["set_hash"],
                          num_classes=3, image_size=16, logits_dtype=torch.float32)
        labels = LabelStore(store, set_hash=meta["set_hash"], recipe=recipe, seed=3, chunks=1, num_images=12,
                            num_classes=3)
        assert run(placements[used_on], label_store=labels)[0] == online["memory"][0], (made_on, used_on)


def test_the_set_goes_to_the_device_when_it_fits_its_share_of_the_device_memory(tmp_path, monkeypatch):
    from teddy import student_data
    from teddy.distilled_set import PngSetDataset
    from teddy.student_data import PixelSet, student_set_placement

    _png_set(tmp_path / "set")  # 9 images of 3 x 12 x 12: 3888 bytes of uint8 pixels
    pixel_bytes = 9 * 3 * 12 * 12
    meta_path = tmp_path / "set/meta.json"
    assert student_data.device_memory_bytes(CPU) is None  # on CPU, in_memory_max_mb decides as before
    assert isinstance(load_student_set(meta_path, device=CPU)[0], TensorImageDataset)
    assert isinstance(load_student_set(meta_path, in_memory_max_mb=0, device=CPU)[0], PngSetDataset)

    fake = {"bytes": 4 * pixel_bytes}  # a device with a fake memory figure: the set is a quarter of it
    monkeypatch.setattr(student_data, "device_memory_bytes", lambda device: fake["bytes"])
    data, _ = load_student_set(meta_path, in_memory_max_mb=0, device=CPU, device_memory_fraction=0.25)
    assert isinstance(data, PixelSet) and data.pixels.device == CPU and len(data) == 9
    fake["bytes"] = 4 * pixel_bytes - 1  # one byte short: streamed (or host memory when that allows)
    assert isinstance(load_student_set(meta_path, in_memory_max_mb=0, device=CPU)[0], PngSetDataset)
    assert isinstance(load_student_set(meta_path, device=CPU)[0], TensorImageDataset)
    fake["bytes"] = 10**9
    assert isinstance(load_student_set(meta_path, device=CPU, device_memory_fraction=0.0)[0], TensorImageDataset)

    imagenet_ipc = {ipc: 1000 * ipc * 3 * 224 * 224 for ipc in (10, 50, 100)}  # 1.5, 7.5, 15 GB of uint8
    monkeypatch.setattr(student_data, "device_memory_bytes", lambda device: 80 * 2**30)  # an 80 GB GPU
    assert all(student_set_placement(b, CPU) == "device" for b in imagenet_ipc.values())
    monkeypatch.setattr(student_data, "device_memory_bytes", lambda device: 40 * 2**30)  # a 40 GB GPU
    assert [student_set_placement(b, CPU) for b in imagenet_ipc.values()] == ["device", "device", "stream"]
    assert student_set_placement(imagenet_ipc[100], CPU, device_memory_fraction=0.5) == "device"
