"""Pretrained base models (config key base.weights): torchvision's own weights for the
architecture, read from the local torch hub cache, or a state_dict / checkpoint file.

ImageNet-1K peers (SRe2L, CDA, G-VBSM, Teddy) all start from torchvision's pretrained
ResNet-18; downloading happens only when base.download_weights is true, so a cluster node
without network access fails with the path to put the file at instead of hanging.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torchvision import models as tvm

from teddy.errors import TeddyError
from teddy.io import load_torch


def torchvision_weights(arch: str):
    """The DEFAULT weights enum entry torchvision has for `arch`."""
    try:
        return tvm.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise TeddyError(f"base.weights: torchvision has no pretrained weights for architecture '{arch}' "
                         f"(config key base.arch); give a path to a state_dict instead") from None


def hub_file(arch: str) -> Path:
    """Where torch.hub keeps (and looks for) the weights file: $TORCH_HOME/hub/checkpoints/<file>."""
    url = torchvision_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def state_dict_from_file(path) -> dict:
    """A plain state_dict, a checkpoint holding one under `state_dict` or `model`, or one of our
    model files (`model` is the module); DataParallel's `module.` prefixes are dropped."""
    payload = load_torch(path, what="pretrained weights")
    if isinstance(payload, nn.Module):
        payload = payload.state_dict()
    elif isinstance(payload, dict) and isinstance(payload.get("model"), nn.Module):
        payload = payload["model"].state_dict()
    elif isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise TeddyError(f"pretrained weights {path} hold no state_dict (config key base.weights)")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def pretrained_state_dict(arch: str, weights: str, download: bool = False) -> tuple[dict, str]:
    """(state_dict, where it came from) for base.weights = 'torchvision' or a file path."""
    if weights != "torchvision":
        return state_dict_from_file(weights), str(weights)
    path = hub_file(arch)
    if not path.is_file():
        url = torchvision_weights(arch).url
        if not download:
            raise TeddyError(f"pretrained weights for '{arch}' not found at {path}: put {url} there "
                             f"(e.g. `curl -L -o {path} {url}`, the folder follows TORCH_HOME), or set "
                             f"base.download_weights: true on a machine with network access")
        torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
    return state_dict_from_file(path), str(path)


def load_pretrained(model: nn.Module, arch: str, weights: str, download: bool = False) -> str:
    """Load base.weights into `model` after checking every name and shape; returns the source."""
    state, source = pretrained_state_dict(arch, weights, download)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise TeddyError(f"pretrained weights {source} are not those of architecture '{arch}': "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]} (config keys base.arch / base.weights)")
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise TeddyError(f"pretrained weights {source} do not fit '{arch}' for this dataset: {name} is "
                             f"{tuple(state[name].shape)} in the file, {tuple(tensor.shape)} in the model "
                             f"(another class count or input channels? config keys base.weights / dataset)")
    model.load_state_dict(state)
    return source
