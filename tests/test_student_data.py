import pytest
import torch
import torch.nn.functional as F

from teddy.data import DatasetInfo, TensorImageDataset
from teddy.student_data import MIX_CUTMIX, StudentData, load_student_set, mixed_cross_entropy, plan_epoch, roi_crop

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

    from teddy.datasets import dataset_info, load_split
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
            "cutmix_or_mixup": {"crop": True, "flip": True, "max_shift": 1, "cutmix": 1.0, "mixup": 0.2},
            # the DC and DSA benchmark augmentations (protocols dc_mnist, dsa), alone and with the others
            "dc_augment": {"crop": False, "flip": False, "dc_augment": {}},
            "dc_augment_noise": {"crop": True, "flip": True, "dc_augment": {"strategy": ["crop", "noise"], "noise": 0.1}},
            "dsa": {"crop": False, "flip": False, "dsa": {}},
            "dsa_cutmix": {"crop": True, "flip": False, "max_shift": 1, "cutmix": 1.0,
                           "dsa": {"strategy": "color_crop_cutout_scale_rotate"}}}


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
        write_label_store(store, placements[made_on], teacher, recipe, 3, CPU, DatasetInfo("toy", 3, 1, 16, None, None), set_hash=meta["set_hash"], logits_dtype=torch.float32)
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


# --- the DC and DSA benchmark augmentations ----------------------------------------------------

# The fields drawn as integers straight from the generator; the float fields (crop boxes, mix
# weights and the cutmix boxes derived from them) go through exp, sqrt and numpy's beta, whose
# last bits depend on the CPU's kernels, so a digest of them would pin one machine.
INTEGER_PLAN_FIELDS = ("order", "bounds", "flip", "shift", "mix_kind", "mix_perm", "chunks")


def _plan_digest(cfg, chunks, epochs=3, plan_epoch=plan_epoch):
    """A digest of the integer fields of `epochs` plans drawn in turn from one generator, and of
    its state after (which counts every draw, the float ones included)."""
    import hashlib

    g, h = torch.Generator().manual_seed(7), hashlib.sha256()
    for _ in range(epochs):
        plan = plan_epoch(23, 5, 12, cfg, g, chunks)
        for key in INTEGER_PLAN_FIELDS:
            value = plan[key]
            h.update(key.encode())
            h.update(value.numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode())
    h.update(g.get_state().numpy().tobytes())
    return h.hexdigest()[:16]


# computed with the code before dc_augment and dsa existed (commit 8f9d631's plan_epoch, run
# through _plan_digest above); integer draws and the generator's state are the same on any CPU
PLAN_DIGESTS = {("none", 1): "c6cab8efd7d48b52", ("none", 2): "8fec3bfe4044d2eb",
                ("flip_shift", 1): "7fd77b173a1c57bc", ("flip_shift", 2): "d55906033a3239af",
                ("crop", 1): "cd39e10d17bcee04", ("crop", 2): "d381167a07c697cb",
                ("cutmix_or_mixup", 1): "7c06870faf33262a", ("cutmix_or_mixup", 2): "4796dc853ec479b1"}


def test_plans_without_the_benchmark_keys_are_drawn_as_before():
    configs = {"none": {}, **AUGMENTS}
    for (name, chunks), digest in PLAN_DIGESTS.items():
        assert _plan_digest(configs[name], chunks) == digest, (name, chunks)
    # with the keys set, the earlier fields of the epoch's plan are those drawn without them
    for name in ("crop", "cutmix_or_mixup"):
        base = plan_epoch(23, 5, 12, AUGMENTS[name], torch.Generator().manual_seed(1), 2)
        more = plan_epoch(23, 5, 12, {**AUGMENTS[name], "dc_augment": {}, "dsa": {}},
                          torch.Generator().manual_seed(1), 2)
        assert set(more) - set(base) == {"dc_op", "dc_arg", "dsa_family", "dsa_param"}
        for key, value in base.items():
            assert torch.equal(value, more[key]) if isinstance(value, torch.Tensor) else value == more[key], key


def test_benchmark_plans_have_their_shapes_and_repeat_for_a_seed():
    cfg = {"crop": False, "flip": False, "dc_augment": {"strategy": ["crop", "scale", "rotate", "noise"]},
           "dsa": {"strategy": "color_crop_cutout_flip_scale_rotate"}}
    a, b = (plan_epoch(23, 5, 12, cfg, torch.Generator().manual_seed(3)) for _ in range(2))
    assert a["dc_op"].dtype == torch.int8 and a["dc_op"].shape == (23,)
    assert a["dc_arg"].dtype == torch.int16 and a["dc_arg"].shape == (23, 2)
    assert a["dc_noise_seed"].dtype == torch.int64 and a["dc_noise_seed"].shape == (5,) and a["dc_noise"] == 0.001
    assert a["dsa_family"].dtype == torch.int8 and a["dsa_family"].shape == (5,)
    assert a["dsa_param"].dtype == torch.float32 and a["dsa_param"].shape == (23, 4)
    assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
    c = plan_epoch(23, 5, 12, cfg, torch.Generator().manual_seed(4))
    assert not torch.equal(a["dc_arg"], c["dc_arg"])
    # DC's ranges (get_daparam's values): shift in [-4, 4), sizes int(U(0.8, 1.2) x 12), whole degrees in [-45, 45)
    many = plan_epoch(2000, 500, 28, {"crop": False, "flip": False, "dc_augment": {}}, torch.Generator().manual_seed(0))
    op, arg = many["dc_op"].long(), many["dc_arg"].long()
    assert set(op.tolist()) == {0, 1, 2} and all(abs((op == k).float().mean().item() - 1 / 3) < 0.05 for k in range(3))
    crop, scale, rotate = arg[op == 0], arg[op == 1], arg[op == 2, 0]
    assert crop.min() == -4 and crop.max() == 3
    assert scale.min() >= int(0.8 * 28) and scale.max() <= int(1.2 * 28)
    assert rotate.min() == -45 and rotate.max() == 44 and (arg[op == 2, 1] == 0).all()
    # the same batches for the same plan
    data = _set(23, 12)
    x1 = torch.cat([mb.x for mb in StudentData(data, 12, CPU).epoch(a)])
    x2 = torch.cat([mb.x for mb in StudentData(data, 12, CPU).epoch(b)])
    assert x1.shape == (23, 3, 12, 12) and x1.dtype == torch.float32 and torch.equal(x1, x2)


def test_benchmark_keys_need_crop_and_flip_stated():
    from teddy.errors import TeddyError

    with pytest.raises(TeddyError, match="must state crop and flip"):
        plan_epoch(4, 4, 12, {"dsa": {}}, torch.Generator())
    with pytest.raises(TeddyError, match="must state flip"):
        plan_epoch(4, 4, 12, {"crop": False, "dc_augment": {}}, torch.Generator())
    with pytest.raises(TeddyError, match="unknown"):
        plan_epoch(4, 4, 12, {"crop": False, "flip": False, "dsa": {"strategy": "color_warp"}}, torch.Generator())
    with pytest.raises(TeddyError, match="unknown"):
        plan_epoch(4, 4, 12, {"crop": False, "flip": False, "dc_augment": {"strategy": ["cutout"]}}, torch.Generator())


def _blob(n=8, size=28):
    """n copies of a bright square off a dark background, normalised as MNIST."""
    x = torch.zeros(n, 1, size, size)
    x[:, :, 9:19, 11:17] = 1.0
    x[:, :, 9:12, 11:13] = 0.5  # an asymmetric corner, so that a flip or a rotation shows
    return (x - 0.1307) / 0.3081


def _dc_batch(x, dc, seed=0):
    plan = plan_epoch(len(x), len(x), x.shape[-1], {"crop": False, "flip": False, "dc_augment": dc},
                      torch.Generator().manual_seed(seed))
    data = TensorImageDataset(x, torch.zeros(len(x), dtype=torch.long), ["a"])
    (mb,) = StudentData(data, x.shape[-1], CPU).epoch(plan)
    return plan, x[plan["order"].long()], mb.x


def test_dc_rotate_alone_turns_every_image_and_keeps_its_mass():
    plan, before, after = _dc_batch(_blob(), {"strategy": ["rotate"]})
    background = before.min()
    # the disc about the centre maps onto itself (the corners take the batch mean: left out)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    disc = ((yy - 13.5) ** 2 + (xx - 13.5) ** 2) < 11**2
    angles = plan["dc_arg"][:, 0].tolist()
    assert all(a != 0 for a in angles)
    for i, angle in enumerate(angles):
        mass_in, mass_out = ((before[i] - background)[:, disc].sum().item(),
                             (after[i] - background)[:, disc].sum().item())
        assert mass_out == pytest.approx(mass_in, rel=0.03), angle
        if abs(angle) >= 3:
            assert (after[i] - before[i]).abs().max() > 0.5, angle


def _dc_reference(x, op, arg):
    """DC's augment (DatasetCondensation utils.py cropfun / scalefun) image by image, for the
    crop and scale operations: padding and cutting, F.interpolate and centring."""
    n, c, h, w = x.shape
    mean = x.mean(dim=(0, 2, 3))
    out = x.clone()
    for i in range(n):
        if op[i] == 0:
            pad = 8
            big = mean.view(c, 1, 1).repeat(1, h + 2 * pad, w + 2 * pad)
            big[:, pad:pad + h, pad:pad + w] = x[i]
            dy, dx = int(arg[i, 0]), int(arg[i, 1])
            out[i] = big[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        elif op[i] == 1:
            sh, sw = int(arg[i, 0]), int(arg[i, 1])
            small = F.interpolate(x[i:i + 1], [sh, sw])[0]
            m = max(sh, sw, h, w)
            canvas = torch.zeros(c, m, m)
            canvas[:, (m - sh) // 2:(m - sh) // 2 + sh, (m - sw) // 2:(m - sw) // 2 + sw] = small
            out[i] = canvas[:, (m - h) // 2:(m - h) // 2 + h, (m - w) // 2:(m - w) // 2 + w]
    return out


def test_dc_crop_and_scale_are_dc_pixel_for_pixel():
    torch.manual_seed(0)
    x = torch.randn(40, 3, 28, 28)
    plan, before, after = _dc_batch(x, {"strategy": ["crop", "scale"]}, seed=5)
    op, arg = plan["dc_op"].long(), plan["dc_arg"].long()
    assert set(op.tolist()) == {0, 1}
    assert torch.equal(after, _dc_reference(before, op, arg))


def test_dc_changes_each_image_by_exactly_one_operation():
    """With crop, scale and rotate, each image is what its own operation alone makes of it."""
    from teddy.student_data import apply_dc_augment

    x = _blob(30)
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    plan, before, after = _dc_batch(x, {}, seed=2)
    op, arg = plan["dc_op"].long(), plan["dc_arg"]
    assert set(op.tolist()) == {0, 1, 2}
    for code in range(3):  # the whole batch given one operation, the same arguments
        alone = apply_dc_augment(before, torch.full_like(op, code), arg, {code})
        mine = op == code
        assert torch.equal(after[mine], alone[mine]), code
        others = [k for k in range(3) if k != code]
        for k in others:  # and not what another operation makes of it (for a non-trivial argument)
            other = apply_dc_augment(before, torch.full_like(op, k), arg, {k})
            moved = (after - other).flatten(1).abs().amax(1) > 1e-4
            assert moved[mine & (arg[:, 0] != 0)].all(), (code, k)
    assert ((after - before).flatten(1).abs().amax(1) > 0)[arg.abs().sum(1) > 0].all()


def test_dc_noise_adds_gaussian_noise_of_its_standard_deviation():
    x = torch.zeros(64, 1, 28, 28)
    plan, before, after = _dc_batch(x, {"strategy": ["noise"], "noise": 0.5})
    assert (plan["dc_op"] == 3).all()
    assert after.std().item() == pytest.approx(0.5, rel=0.02) and abs(after.mean().item()) < 0.01


def _dsa_batch(x, strategy, seed=0, **params):
    plan = plan_epoch(len(x), len(x), x.shape[-1], {"crop": False, "flip": False,
                                                     "dsa": {"strategy": strategy, **params}},
                      torch.Generator().manual_seed(seed))
    data = TensorImageDataset(x, torch.zeros(len(x), dtype=torch.long), ["a"])
    (mb,) = StudentData(data, x.shape[-1], CPU).epoch(plan)
    return plan, x[plan["order"].long()], mb.x


def test_dsa_families_do_what_diffaugment_does():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 28, 28)
    # colour: brightness, saturation and contrast with the drawn per-sample factors
    plan, before, after = _dsa_batch(x, "color")
    p = plan["dsa_param"]
    assert (p[:, 0].abs() <= 0.5).all() and (p[:, 1] <= 2.0).all() and ((p[:, 2] >= 0.5) & (p[:, 2] <= 1.5)).all()
    y = before + p[:, 0].view(-1, 1, 1, 1)
    y = (y - y.mean(1, keepdim=True)) * p[:, 1].view(-1, 1, 1, 1) + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * p[:, 2].view(-1, 1, 1, 1) + y.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(after, y, atol=1e-5)
    # crop: a shift of at most int(28 x 0.125 + 0.5) = 4 pixels, zeros entering
    plan, before, after = _dsa_batch(x, "crop")
    shift = plan["dsa_param"][:, :2].long()
    assert shift.abs().max() == 4
    for i, (dy, dx) in enumerate(shift.tolist()):
        expected = torch.zeros(3, 40, 40)
        expected[:, 6 - dy:34 - dy, 6 - dx:34 - dx] = before[i]
        assert torch.equal(after[i], expected[:, 6:34, 6:34])
    # cutout: a square of side int(28 x 0.5 + 0.5) = 14 set to zero, clipped at the border
    plan, before, after = _dsa_batch(x, "cutout")
    box = plan["dsa_param"].long()
    assert ((box[:, 2] - box[:, 0]) == 14).all() and ((box[:, 3] - box[:, 1]) == 14).all()
    for i, (r0, c0, r1, c1) in enumerate(box.tolist()):
        inside = torch.zeros(28, 28, dtype=torch.bool)
        inside[max(r0, 0):r1, max(c0, 0):c1] = True
        assert (after[i][:, inside] == 0).all() and torch.equal(after[i][:, ~inside], before[i][:, ~inside])
    # flip: about half the images mirrored
    plan, before, after = _dsa_batch(x, "flip")
    flipped = plan["dsa_param"][:, 0] > 0.5
    assert 0 < flipped.sum() < 16
    assert torch.equal(after[flipped], before[flipped].flip(-1)) and torch.equal(after[~flipped], before[~flipped])
    # scale and rotate: DSA's affine matrices, bilinear, zeros outside
    plan, before, after = _dsa_batch(x, "scale")
    s = plan["dsa_param"][:, :2]
    assert (s >= 1 / 1.2).all() and (s <= 1.2).all()
    theta = torch.zeros(16, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
    expected = F.grid_sample(before, F.affine_grid(theta, list(before.shape), align_corners=False), align_corners=False)
    assert torch.allclose(after, expected, atol=1e-6)
    plan, before, after = _dsa_batch(x, "rotate")
    angle = plan["dsa_param"][:, 0]
    assert (angle.abs() <= 15 / 180 * torch.pi + 1e-6).all() and (plan["dsa_param"][:, 1:] == 0).all()
    theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), torch.zeros(16)], 1),
                         torch.stack([angle.sin(), angle.cos(), torch.zeros(16)], 1)], 1)
    expected = F.grid_sample(before, F.affine_grid(theta, list(before.shape), align_corners=False), align_corners=False)
    assert torch.allclose(after, expected, atol=1e-6)


def test_dsa_draws_one_family_per_batch_from_its_strategy():
    from teddy.student_data import DSA_FAMILIES

    plan = plan_epoch(400, 4, 28, {"crop": False, "flip": False, "dsa": {"strategy": "color_crop_cutout_scale_rotate"}},
                      torch.Generator().manual_seed(0))
    names = [DSA_FAMILIES[int(f)] for f in plan["dsa_family"]]
    assert set(names) == {"color", "crop", "cutout", "scale", "rotate"}  # no flip: MNIST's strategy
    # one gray image per batch: colour's saturation is a no-op on one channel, but each batch is changed
    x = _blob(400)
    data = TensorImageDataset(x, torch.zeros(400, dtype=torch.long), ["a"])
    for mb in StudentData(data, 28, CPU).epoch(plan):
        assert mb.x.shape == (4, 1, 28, 28) and not torch.equal(mb.x, x[:4])


@pytest.mark.parametrize("augment", ["dc_augment_noise", "dsa_cutmix"])
def test_stored_labels_replay_the_benchmark_augmentations(tmp_path, augment):
    """The plan's new fields go into the store's epoch files, and the student reading them
    trains as the online-KD student does."""
    from teddy.label_store import LabelStore, epoch_path, write_label_store
    from teddy.models import build_model
    from teddy.train import fit, targets_for

    meta = _png_set(tmp_path / "set", n_per_class=4, classes=3, channels=1, size=16)
    placements = _three_placements(tmp_path / "set/meta.json")
    info = DatasetInfo("x", 3, 1, 16, tuple(meta["mean"]), tuple(meta["std"]))
    recipe = {"epochs": 2, "batch_size": 5, "optimizer": "adamw", "lr": 1e-2, "temperature": 4.0,
              "hard_label_weight": 0.5, "augment": AUGMENTS[augment]}

    def run(data, **targets):
        torch.manual_seed(2)
        student = build_model("convnet", 3, 1, 16, depth=1, width=4)
        return [h["loss"] for h in fit(student, data, recipe, CPU, seed=3, targets=targets_for(**targets), info=info)]

    torch.manual_seed(1)
    teacher = build_model("convnet", 3, 1, 16, depth=2, width=4).eval()
    online = run(placements["memory"], teacher=teacher)
    store = tmp_path / "store/meta.json"
    write_label_store(store, placements["streamed"], teacher, recipe, 3, CPU, DatasetInfo("toy", 3, 1, 16, None, None), set_hash=meta["set_hash"], logits_dtype=torch.float32)
    saved = torch.load(epoch_path(store.parent, 0), weights_only=False)
    assert {"dc_op", "dc_arg", "dc_noise_seed"} <= set(saved) if augment.startswith("dc") else "dsa_param" in saved
    labels = LabelStore(store, set_hash=meta["set_hash"], recipe=recipe, seed=3, chunks=1, num_images=12,
                        num_classes=3)
    assert run(placements["device"], label_store=labels) == online
