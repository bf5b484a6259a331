"""Distillation augmentation (teddy.augment): replayable, differentiable, within the pixel box."""

import torch

import teddy.data
from teddy.augment import apply_augment, augment, pixel_bounds, sample_augment_params
from teddy.datasets import dataset_info


def test_augment_is_replayable_and_differentiable():
    x = torch.randn(6, 3, 32, 32, requires_grad=True)
    cfg = {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 3}
    params = sample_augment_params(6, 32, cfg, torch.Generator().manual_seed(1))
    y1, y2 = apply_augment(x, params), apply_augment(x, params)
    assert y1.shape == x.shape and torch.equal(y1, y2)
    y1.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = augment(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(same, y1)


def test_no_augmentation_is_the_identity_and_draws_nothing():
    x = torch.randn(4, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    params = sample_augment_params(4, 28, {"crop": False, "flip": False}, g)
    assert params == {} and torch.equal(apply_augment(x, params), x) and torch.equal(g.get_state(), state)


def test_pixel_bounds_are_zero_and_one_in_normalised_space():
    info = dataset_info("cifar10")
    lo, hi = pixel_bounds(info)
    mean, std = torch.tensor(info.mean), torch.tensor(info.std)
    assert torch.allclose(lo.flatten() * std + mean, torch.zeros(3), atol=1e-6)
    assert torch.allclose(hi.flatten() * std + mean, torch.ones(3), atol=1e-6)


def test_augmentation_left_the_data_module():
    for name in ("sample_augment_params", "apply_augment", "augment", "pixel_bounds", "denormalise"):
        assert not hasattr(teddy.data, name), name
