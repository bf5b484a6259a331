import pytest
import torch

from teddy.data import TensorImageDataset
from teddy.errors import TeddyError
from teddy.losses import kd_loss
from teddy.models import build_model
from teddy.recipes import lr_factor
from teddy.train import evaluate_accuracy, fit, recalibrate_bn, targets_for

CPU = torch.device("cpu")


def _toy_set(n=120, seed=0):
    from fixtures import class_patterns

    images, labels = class_patterns(n, 10, 28, 1, seed)
    x = torch.from_numpy(images).float() / 255
    return TensorImageDataset((x - 0.3) / 0.3, torch.from_numpy(labels).long(), [str(i) for i in range(10)])


RECIPE = {"epochs": 4, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9}


def test_training_lowers_loss_and_learns():
    torch.manual_seed(0)
    model = build_model("convnet", 10, 1, 28, depth=2, width=8)
    data = _toy_set()
    history = fit(model, data, {**RECIPE, "epochs": 6}, CPU, seed=0)
    assert history[-1]["loss"] < history[0]["loss"]
    assert evaluate_accuracy(model, data, CPU) > 0.5


def test_stop_after_epoch_keeps_the_full_length_schedule():
    # a prior pool's snapshots: the first 2 epochs of a 10-epoch cosine, not a 2-epoch cosine run to 0
    data, steps = _toy_set(), 4  # 120 images in batches of 32

    def model():
        torch.manual_seed(0)
        return build_model("convnet", 10, 1, 28, depth=2, width=8)

    full = {**RECIPE, "epochs": 10}
    stopped = fit(model(), data, {**full, "stop_after_epoch": 2}, CPU)
    assert [h["epoch"] for h in stopped] == [1, 2]
    assert stopped[-1]["lr"] == pytest.approx(RECIPE["lr"] * lr_factor(full, steps)(2 * steps))
    assert stopped[-1]["lr"] > 0.9 * RECIPE["lr"]
    short = fit(model(), data, {**RECIPE, "epochs": 2}, CPU)
    assert short[-1]["lr"] == pytest.approx(0.0)
    # the same first epochs, step for step, as the full-length run
    whole = fit(model(), data, full, CPU)
    assert [h["loss"] for h in stopped] == [h["loss"] for h in whole[:2]]


def test_kd_loss_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(8, 10), 4.0).item() > 0


def test_training_with_teacher_runs_without_hard_labels():
    teacher = build_model("convnet", 10, 1, 28, depth=2, width=8)
    student = build_model("convnet", 10, 1, 28, depth=1, width=8)
    history = fit(student, _toy_set(40), {**RECIPE, "epochs": 2, "optimizer": "adamw", "lr": 1e-3},
                  CPU, targets=targets_for(teacher))
    assert len(history) == 2


def test_non_finite_loss_stops_with_epoch_and_step():
    model = build_model("convnet", 10, 1, 28, depth=1, width=4)
    data = _toy_set(40)
    data.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(TeddyError, match="non-finite loss at epoch 1, step"):
        fit(model, data, {**RECIPE, "batch_size": 64}, CPU)


def test_recalibrate_bn_moves_statistics_to_the_data():
    model = build_model("convnet", 10, 1, 28, depth=1, width=4)
    data = _toy_set(64)
    data.images.add_(5.0)
    recalibrate_bn(model, data, CPU, batches_to_use=2, batch_size=32)
    bn = model.features[1]
    # first BN sees conv(x) of shifted inputs: its running mean is no longer the reset value 0
    assert bn.running_mean.abs().sum() > 0.1 and bn.num_batches_tracked > 0


def test_the_epoch_level_nan_guard_off_cpu_names_the_epoch_and_keeps_results_exact():
    """What CUDA runs do (the running loss stays on the device, the guard reads it once per
    epoch), exercised on CPU: the same mean loss, and a non-finite loss still stops the run."""
    from teddy.recipes import lr_schedule, make_optimizer
    from teddy.student_data import StudentData, plan_epoch
    from teddy.train import HardLabels, StepSettings, train_one_epoch

    data = _toy_set(40)

    def one_epoch(check_each_step, lr=0.05):
        torch.manual_seed(0)
        model = build_model("convnet", 10, 1, 28, depth=1, width=4)
        recipe = {**RECIPE, "lr": lr}
        optimizer = make_optimizer(model.parameters(), recipe)
        plan = plan_epoch(40, 16, 28, {"flip": True, "max_shift": 2}, torch.Generator().manual_seed(0))
        return train_one_epoch(model, StudentData(data, 28, CPU).epoch(plan), HardLabels().configure(recipe, CPU),
                               optimizer, lr_schedule(optimizer, {"epochs": 3}, 1),
                               StepSettings(CPU, check_each_step=check_each_step))

    assert one_epoch(False) == one_epoch(True) == one_epoch(None)
    with pytest.raises(TeddyError, match=r"non-finite loss at epoch 1 \(checked once per epoch on cpu\)"):
        one_epoch(False, lr=1e30)
    with pytest.raises(TeddyError, match="non-finite loss at epoch 1, step"):
        one_epoch(None, lr=1e30)


def test_cuda_only_recipe_switches_leave_cpu_runs_exact():
    teacher = build_model("convnet", 10, 1, 28, depth=1, width=4)
    runs = []
    for extra in ({}, {"compile": True, "amp": True, "channels_last": True}):
        torch.manual_seed(0)
        model = build_model("convnet", 10, 1, 28, depth=1, width=4)
        runs.append(fit(model, _toy_set(40), {**RECIPE, "epochs": 2, **extra}, CPU, seed=0,
                        targets=targets_for(teacher)))
    assert [h["loss"] for h in runs[0]] == [h["loss"] for h in runs[1]]
