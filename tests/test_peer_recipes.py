"""The pieces of G-VBSM's and EDC's student protocols (docs/method.md section 7 g, h):
a teacher ensemble (plain or norm-rescaled mean of logits), the MSE + CE loss, EMA evaluation and
EDC's linear schedule, each against its formula; stored and online teacher outputs stay equal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.label_store import LabelStore, write_label_store
from teddy.models import build_model
from teddy.protocols import load_protocol
from teddy.recipes import lr_factor
from teddy.student_data import MIX_CUTMIX, MicroBatch
from teddy.teachers import TeacherEnsemble
from teddy.train import fit, targets_for

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = {"epochs": 4, "batch_size": 8, "optimizer": "adamw", "lr": 1e-2, "kd_loss": "mse_ce", "hard_label_weight": 0.1,
          "ema_decay": 0.9, "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "cutmix": 1.0}}


def _teacher(seed, width=8):
    torch.manual_seed(seed)
    return build_model("convnet", 10, 1, 28, depth=2, width=width).eval()


def _student():
    torch.manual_seed(2)
    return build_model("convnet", 10, 1, 28, depth=1, width=4)  # BatchNorm: buffers the EMA leaves alone


def _distilled(n=20):
    torch.manual_seed(0)
    return TensorImageDataset(torch.randn(n, 1, 28, 28), torch.arange(n) % 10, [str(i) for i in range(10)])


class Scaled(torch.nn.Module):
    def __init__(self, weight, scale):
        super().__init__()
        self.weight, self.scale = weight, scale

    def forward(self, x):
        return self.scale * x.flatten(1) @ self.weight


def test_the_ensemble_mean_and_rescaled_mean_follow_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 2, 2)
    a, b = Scaled(torch.randn(4, 3), 1.0), Scaled(torch.randn(4, 3), 50.0)  # b's logits 50 times larger
    la, lb = a(x), b(x)
    assert torch.allclose(TeacherEnsemble([a, b], "mean")(x), (la + lb) / 2)
    na, nb = la.norm(), lb.norm()  # Frobenius norms over the whole batch, one per teacher
    mean_norm = (na + nb) / 2
    expected = (la / na * mean_norm + lb / nb * mean_norm) / 2
    got = TeacherEnsemble([a, b], "rescaled_mean")(x)
    assert torch.allclose(got, expected, atol=1e-5)
    # rescaled, each teacher weighs the same whatever its scale: scaling one again changes only the
    # overall size (the mean norm), not the soft label's direction; the plain mean is dominated by b
    again = TeacherEnsemble([a, Scaled(b.weight, 500.0)], "rescaled_mean")(x)
    assert torch.allclose(again / again.norm(), got / got.norm(), atol=1e-6)
    plain = TeacherEnsemble([a, Scaled(b.weight, 500.0)], "mean")(x)
    assert not torch.allclose(plain / plain.norm(), got / got.norm(), atol=1e-3)
    with pytest.raises(TeddyError, match="unknown teachers.combine 'median'"):
        TeacherEnsemble([a, b], "median")


def test_mse_ce_is_mse_to_the_logits_plus_weighted_ce_towards_the_unmixed_label():
    teacher = _teacher(1)
    targets = targets_for(teacher).configure(RECIPE, CPU)
    torch.manual_seed(3)
    x, y, logits = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]), torch.randn(4, 10)
    perm = torch.tensor([1, 0, 3, 2])
    mb = MicroBatch(0, 0, torch.arange(4), x, y, MIX_CUTMIX, 0.7, perm, 4)
    with torch.no_grad():
        soft = teacher(x)
    want = F.mse_loss(logits, soft) + 0.1 * F.cross_entropy(logits, y)
    assert torch.allclose(targets.loss(logits, x, mb), want)
    mixed = F.mse_loss(logits, soft) + 0.1 * (0.7 * F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(logits, y[perm]))
    assert not torch.allclose(want, mixed)  # the CE term ignores CutMix, as mse_gt does
    with pytest.raises(TeddyError, match="unknown kd_loss 'l1'"):
        targets_for(teacher).configure({**RECIPE, "kd_loss": "l1"}, CPU)


def test_the_ema_run_returns_the_moving_average_of_its_trajectory_and_the_live_buffers():
    data, decay = _distilled(), RECIPE["ema_decay"]
    student = _student()
    start = [p.detach().clone() for p in student.parameters()]
    trajectory = []
    hook = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: trajectory.append([p.detach().clone() for p in student.parameters()]))
    try:
        fit(student, data, RECIPE, CPU, seed=3, targets=targets_for(_teacher(1)))
    finally:
        hook.remove()
    plain = _student()
    fit(plain, data, {k: v for k, v in RECIPE.items() if k != "ema_decay"}, CPU, seed=3,
        targets=targets_for(_teacher(1)))
    assert len(trajectory) == 4 * 3  # 20 images in batches of 8: 3 steps per epoch
    average = start
    for weights in trajectory:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights)]
    for got, want in zip(student.parameters(), average, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    # training itself is untouched by the average: the plain run ends where the trajectory does
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), trajectory[-1]))
    assert not all(torch.allclose(a, b) for a, b in zip(plain.parameters(), student.parameters()))
    for (name, a), b in zip(student.named_buffers(), plain.buffers()):
        assert torch.equal(a, b), name  # BatchNorm statistics: the trained model's


def test_an_ema_run_resumes_to_the_same_weights(tmp_path):
    class Crash(Exception):
        pass

    data, recipe = _distilled(), {**RECIPE, "checkpoint_every": 1}

    def run(checkpoint, crash_at=None):
        def on_epoch_end(epoch, model, metrics):
            if epoch == crash_at:
                raise Crash
        student = _student()
        fit(student, data, recipe, CPU, seed=3, targets=targets_for(_teacher(1)), checkpoint_path=checkpoint,
            on_epoch_end=on_epoch_end)
        return list(student.state_dict().values())

    reference = run(None)
    with pytest.raises(Crash):
        run(tmp_path / "s.ckpt", crash_at=3)
    assert all(torch.equal(a, b) for a, b in zip(run(tmp_path / "s.ckpt"), reference))


def test_edc_linear_schedule_falls_to_half():
    edc = load_protocol("edc_imagenet1k")["recipe"]
    factor = lr_factor(edc, 10)  # 10 steps per epoch, stepped per epoch
    assert factor(0) == 1.0 and factor(9) == 1.0
    assert factor(10 * 299) == pytest.approx(1 - 299 / 600)  # EDC: 1 - epoch / (st x epochs), st = 2
    assert factor(10 * 150 + 5) == pytest.approx(0.75)
    assert lr_factor({"epochs": 4, "schedule": "linear"}, 1)(4) == 0.0  # default: to 0


def test_stored_ensemble_labels_train_the_same_student_as_the_online_ensemble(tmp_path):
    data = _distilled()
    ensemble = lambda: TeacherEnsemble([_teacher(1), _teacher(5, width=4)], "rescaled_mean")
    online, stored = _student(), _student()
    online_history = fit(online, data, RECIPE, CPU, seed=3, targets=targets_for(ensemble()))
    meta = tmp_path / "store/meta.json"
    write_label_store(meta, data, ensemble(), RECIPE, 3, CPU, DatasetInfo("toy", 10, 1, 28, None, None), set_hash="abc",
                      logits_dtype=torch.float32)
    store = LabelStore(meta, set_hash="abc", recipe=RECIPE, seed=3, chunks=1, num_images=len(data), num_classes=10)
    stored_history = fit(stored, data, RECIPE, CPU, seed=3, targets=targets_for(label_store=store))
    assert [h["loss"] for h in stored_history] == [h["loss"] for h in online_history]
    for a, b in zip(online.state_dict().values(), stored.state_dict().values()):
        assert torch.equal(a, b)
    top3 = tmp_path / "top3/meta.json"
    write_label_store(top3, data, ensemble(), RECIPE, 3, CPU, DatasetInfo("toy", 10, 1, 28, None, None), set_hash="abc",
                      keep_topk=3)
    store = LabelStore(top3, set_hash="abc", recipe=RECIPE, seed=3, chunks=1, num_images=len(data), num_classes=10,
                       keep_topk=3)
    with pytest.raises(TeddyError, match="kd_loss mse_ce regresses every logit.*evaluate.keep_topk"):
        fit(_student(), data, RECIPE, CPU, seed=3, targets=targets_for(label_store=store))


def _rded_shuffle(image: torch.Tensor, cols, rows) -> torch.Tensor:
    """RDED's ShufflePatches written out for one image with given strip orders: cut the columns
    into strips, concatenate them in `cols` order, then the same for rows."""
    factor = len(cols)
    strips = list(image.split(image.shape[-1] // factor, dim=-1))
    image = torch.cat([strips[k] for k in cols], dim=-1)
    strips = list(image.split(image.shape[-2] // factor, dim=-2))
    return torch.cat([strips[k] for k in rows], dim=-2)


def test_shuffle_patches_reorders_each_images_strips_as_rded_does():
    from teddy.student_data import draw_shuffle_patches, plan_epoch, shuffle_patches

    image = torch.arange(16.0).view(1, 1, 4, 4)
    swapped = shuffle_patches(image, torch.tensor([[1, 0]]), torch.tensor([[0, 1]]))
    assert swapped[0, 0, 0].tolist() == [2.0, 3.0, 0.0, 1.0]  # the two column strips swapped, rows kept
    torch.manual_seed(0)
    x = torch.randn(6, 3, 12, 12)
    plan = draw_shuffle_patches(6, 12, 3, torch.Generator().manual_seed(1))
    got = shuffle_patches(x, plan["patch_cols"], plan["patch_rows"])
    for i in range(6):
        want = _rded_shuffle(x[i], plan["patch_cols"][i].tolist(), plan["patch_rows"][i].tolist())
        assert torch.equal(got[i], want)
    assert sorted(plan["patch_cols"][0].tolist()) == [0, 1, 2]
    # drawn after everything else: the rest of a plan is the plan without it
    cfg = {"crop": True, "flip": True, "cutmix": 1.0}
    with_patches = plan_epoch(20, 8, 28, {**cfg, "shuffle_patches": 2}, torch.Generator().manual_seed(4))
    without = plan_epoch(20, 8, 28, cfg, torch.Generator().manual_seed(4))
    assert set(with_patches) - set(without) == {"patch_cols", "patch_rows"}
    same = lambda a, b: torch.equal(a, b) if torch.is_tensor(a) else a == b
    assert all(same(without[k], with_patches[k]) for k in without if without[k] is not None)
    assert "patch_cols" not in plan_epoch(20, 8, 28, {**cfg, "shuffle_patches": 1}, torch.Generator().manual_seed(4))
    with pytest.raises(TeddyError, match="shuffle_patches=3 needs an image side divisible by it, not 28"):
        plan_epoch(20, 8, 28, {**cfg, "shuffle_patches": 3}, torch.Generator().manual_seed(4))


def test_a_shuffle_patches_student_reads_the_same_pixels_from_a_store(tmp_path):
    data, recipe = _distilled(), {**RECIPE, "augment": {**RECIPE["augment"], "shuffle_patches": 2}}
    online, stored = _student(), _student()
    online_history = fit(online, data, recipe, CPU, seed=3, targets=targets_for(_teacher(1)))
    meta = tmp_path / "store/meta.json"
    write_label_store(meta, data, _teacher(1), recipe, 3, CPU, DatasetInfo("toy", 10, 1, 28, None, None), set_hash="abc",
                      logits_dtype=torch.float32)
    store = LabelStore(meta, set_hash="abc", recipe=recipe, seed=3, chunks=1, num_images=len(data), num_classes=10)
    assert [h["loss"] for h in fit(stored, data, recipe, CPU, seed=3, targets=targets_for(label_store=store))] == \
        [h["loss"] for h in online_history]
    plain = _student()
    plain_history = fit(plain, data, RECIPE, CPU, seed=3, targets=targets_for(_teacher(1)))
    assert [h["loss"] for h in plain_history] != [h["loss"] for h in online_history]  # the shuffle took effect
