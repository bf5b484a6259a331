"""A registry of models by name (timm style): `build_model("convnet", num_classes=10, ...)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from teddy.errors import TeddyError
from teddy.registry import Registry


@dataclass(frozen=True)
class Architecture:
    build: Callable[..., nn.Module]  # build(num_classes=, in_channels=, image_size=, **options)
    # smallest input side it supports (its last feature map keeps >= 1 pixel), as a number or a
    # function of the constructor options
    min_image_size: int | Callable[..., int] = 1


MODELS = Registry("architecture", "base.arch / evaluate.students")


def register(name: str, min_image_size: int | Callable[..., int] = 1):
    def wrap(fn):
        MODELS.register(name, Architecture(fn, min_image_size))
        return fn
    return wrap


def min_image_size(name: str, **options) -> int:
    size = MODELS[name].min_image_size
    return int(size(**options) if callable(size) else size)


def check_image_size(name: str, image_size: int, **options) -> None:
    """One line when `image_size` is too small for the architecture (checked at config load)."""
    needed = min_image_size(name, **options)
    if int(image_size) < needed:
        detail = f" with options {options}" if options else ""
        raise TeddyError(f"architecture '{name}'{detail} needs images of at least {needed}x{needed} pixels, "
                         f"but dataset.image_size is {image_size}")


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    architecture = MODELS[name]  # an unknown name: one line listing the registered ones
    try:
        check_image_size(name, image_size, **kwargs)
    except TypeError as exc:
        raise TeddyError(f"bad options for architecture '{name}': {exc}") from None
    try:
        return architecture.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    except TypeError as exc:
        raise TeddyError(f"bad options for architecture '{name}': {exc}") from None


class ConvNet(nn.Module):
    """The ConvNet-D of the classic distillation tables: D x [conv3x3(width), norm, ReLU, avgpool2],
    then a linear classifier. BatchNorm by default so BN-statistics matching applies; `instance`
    is the DC benchmark's instance norm, GroupNorm(width, width) with affine weights: each image
    normalised on its own, so a student's output never depends on the rest of its batch.
    `mnist_padding`: the first conv pads a 1-channel input by 3, so 28 px is treated as 32 (the
    DC benchmark's networks.py ConvNet: classifier 128 x 4 x 4 at depth 3)."""

    NORMS = ("batch", "instance", "none")

    def __init__(self, num_classes: int, in_channels: int, image_size: int, depth: int = 3, width: int = 128,
                 norm: str = "batch", mnist_padding: bool = False):
        super().__init__()
        if norm not in self.NORMS:
            raise TeddyError(f"convnet norm must be one of {list(self.NORMS)}, got '{norm}'")
        layers, channels = [], in_channels
        size = image_size + (4 if mnist_padding and in_channels == 1 else 0)
        for d in range(depth):
            padding = 3 if (d == 0 and mnist_padding and in_channels == 1) else 1
            layers += [nn.Conv2d(channels, width, 3, padding=padding, bias=norm != "batch")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            elif norm == "instance":
                layers.append(nn.GroupNorm(width, width, affine=True))
            layers += [nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register("convnet", min_image_size=lambda depth=3, **_: 2 ** int(depth))  # one 2x pooling per layer
def convnet(num_classes, in_channels, image_size, depth=3, width=128, norm="batch", mnist_padding=False):
    return ConvNet(num_classes, in_channels, image_size, depth=depth, width=width, norm=norm,
                   mnist_padding=mnist_padding)


def _small_input_stem(model: nn.Module, in_channels: int, width: int) -> nn.Module:
    """3x3 stride-1 first conv and no max-pool: the CIFAR/Tiny-ImageNet adaptation."""
    model.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class SmallResNet(tvm.ResNet):
    """torchvision's ResNet with BasicBlocks, a small-input stem and a configurable base width."""

    def __init__(self, layers, num_classes, in_channels, width=64):
        super().__init__(BasicBlock, layers, num_classes=num_classes)
        if width != 64:  # rebuild the stages at the narrower width
            self.inplanes = width
            self.bn1 = nn.BatchNorm2d(width)
            self.layer1 = self._make_layer(BasicBlock, width, layers[0])
            self.layer2 = self._make_layer(BasicBlock, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(BasicBlock, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(BasicBlock, width * 8, layers[3], stride=2)
            self.fc = nn.Linear(width * 8, num_classes)
        _small_input_stem(self, in_channels, width)


@register("resnet18_small", min_image_size=8)  # three stride-2 stages
def resnet18_small(num_classes, in_channels, image_size):
    """ResNet-18 for 28-64 pixel inputs (the Tiny-ImageNet base model of SRe2L/Teddy)."""
    return SmallResNet([2, 2, 2, 2], num_classes, in_channels)


@register("resnet10_w16", min_image_size=8)
def resnet10_w16(num_classes, in_channels, image_size):
    """A ResNet-10 (one BasicBlock per stage) at a quarter of ResNet-18's width (16..128
    channels), small-input stem. Sized to train in seconds on 2 CPU cores."""
    return SmallResNet([1, 1, 1, 1], num_classes, in_channels, width=16)


def _torchvision(ctor, num_classes, in_channels):
    model = ctor(weights=None, num_classes=num_classes)
    if in_channels != 3:  # the first convolution takes the dataset's channels
        parent, name, old = next((parent, name, child) for parent in model.modules()
                                 for name, child in parent.named_children() if isinstance(child, nn.Conv2d))
        setattr(parent, name, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                        bias=old.bias is not None))
    return model


# torchvision's ImageNet-style models (224-pixel inputs, five stride-2 stages: at least 32 pixels;
# AlexNet's 11x11 stride-4 stem and three 3x3 stride-2 max-pools: 63), registered under their own
# names; the last four are the ImageNet-1K teacher ensembles of G-VBSM and EDC (teddy.teachers)
for _name, (_ctor, _min) in {"resnet18": (tvm.resnet18, 32), "resnet50": (tvm.resnet50, 32),
                             "resnet101": (tvm.resnet101, 32), "mobilenet_v2": (tvm.mobilenet_v2, 32),
                             "efficientnet_b0": (tvm.efficientnet_b0, 32),
                             "shufflenet_v2_x0_5": (tvm.shufflenet_v2_x0_5, 32), "alexnet": (tvm.alexnet, 63)}.items():
    register(_name, min_image_size=_min)(lambda num_classes, in_channels, image_size, _ctor=_ctor:
                                         _torchvision(_ctor, num_classes, in_channels))


def arch_spec(cfg: dict, arch: str) -> dict:
    """A registry name with its `arch_options` from the config: what model_from_spec builds."""
    return {"arch": arch, **(cfg.get("arch_options") or {}).get(arch, {})}


def model_from_spec(spec: dict, info, seed: int | None = None) -> nn.Module:
    """Build from a config entry {arch: name, options...} and a DatasetInfo; `seed` fixes the
    initial weights (they are part of what a seed controls)."""
    if seed is not None:
        torch.manual_seed(seed)
    spec = dict(spec)
    name = spec.pop("arch")
    return build_model(name, num_classes=info.num_classes, in_channels=info.channels,
                       image_size=info.image_size, **spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
