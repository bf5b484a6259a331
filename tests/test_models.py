import pytest
import torch

from teddy.errors import TeddyError
from teddy.models import MODELS, bn_layers, build_model, count_parameters, min_image_size


@pytest.mark.parametrize("name,channels,size", [
    ("convnet", 1, 28), ("convnet", 3, 32), ("resnet18_small", 3, 32), ("resnet10_w16", 1, 28),
    ("resnet18", 3, 64), ("resnet50", 3, 64), ("resnet101", 3, 64), ("mobilenet_v2", 3, 64),
])
def test_forward_shapes_and_batchnorm(name, channels, size):
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert len(bn_layers(model)) > 0


def test_small_input_resnet_keeps_resolution():
    model = build_model("resnet18_small", num_classes=10, in_channels=3, image_size=32)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_convnet_depth_and_width_are_configurable():
    small = build_model("convnet", 10, 1, 28, depth=2, width=16)
    large = build_model("convnet", 10, 1, 28, depth=3, width=64)
    assert count_parameters(small) < count_parameters(large)
    assert len(bn_layers(small)) == 2 and len(bn_layers(large)) == 3


def test_narrow_resnet_is_smaller_than_resnet18_small():
    assert count_parameters(build_model("resnet10_w16", 10, 1, 28)) * 10 < \
        count_parameters(build_model("resnet18_small", 10, 1, 28))


def test_unknown_architecture_is_one_clear_error():
    with pytest.raises(TeddyError, match="unknown architecture 'vgg99'"):
        build_model("vgg99", 10)
    with pytest.raises(TeddyError, match="bad options for architecture 'convnet'"):
        build_model("convnet", 10, 1, 28, depht=3)
    assert {"convnet", "resnet18_small", "resnet18", "resnet50", "resnet101", "mobilenet_v2"} <= set(MODELS)


@pytest.mark.parametrize("name,channels,size,options", [
    ("convnet", 3, 20, {"depth": 3, "width": 8}), ("convnet", 1, 37, {"depth": 5, "width": 8}),
    ("resnet10_w16", 3, 20, {}), ("resnet18_small", 1, 13, {}), ("resnet18", 1, 40, {}),
    ("mobilenet_v2", 3, 33, {}),
])
def test_models_follow_any_image_size_and_channels(name, channels, size, options):
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size, **options).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_too_small_images_are_refused_with_the_size_needed():
    with pytest.raises(TeddyError, match=r"'convnet' with options \{'depth': 5\} needs .* at least 32x32.* is 20"):
        build_model("convnet", 10, 3, 20, depth=5)
    with pytest.raises(TeddyError, match="'resnet50' needs images of at least 32x32"):
        build_model("resnet50", 10, 3, 28)
    assert min_image_size("convnet", depth=3) == 8 and min_image_size("resnet10_w16") == 8
