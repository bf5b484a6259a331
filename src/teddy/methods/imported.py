"""`import`: a distilled set made elsewhere (a peer's released images), read from an ImageFolder
(recipe key `path`: one folder per class, sorted folder order = class index, as torchvision's
ImageFolder and the peers' evaluation code number them). The first `ipc` images (sorted by file
name) of every class are resized to the dataset's image size; the distill stage then writes them
as our PNG set, so they go through the same students, label protocols and tables as ours.
"""

from __future__ import annotations

from pathlib import Path

import torch

from teddy.errors import TeddyError
from teddy.methods.base import Distilled, DistillTask
from teddy.methods.registry import register_method

# the recipe keys only import reads (its part of the config schema)
RECIPE_KEYS = {
    "path": {"type": "string", "description": "import: an ImageFolder of distilled images made elsewhere (class folders in sorted order = class index)"},
}

def check_config(recipe: dict, ctx) -> None:
    if not recipe.get("path"):
        raise TeddyError(f"{ctx.key} is an import but names no ImageFolder (key path)")


@register_method("import", recipe_keys=RECIPE_KEYS, check=check_config, per_batch=False)
def distill(task: DistillTask) -> Distilled:
    from torchvision import datasets, transforms

    root = Path(task.recipe["path"])
    info = task.info
    if not root.is_dir():
        raise TeddyError(f"import path {root} is not a folder (distill.methods.*.path)")
    tf = transforms.Compose([transforms.Grayscale() if info.channels == 1 else transforms.Lambda(lambda im: im.convert("RGB")),
                             transforms.Resize(info.image_size), transforms.CenterCrop(info.image_size),
                             transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    try:
        folder = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise TeddyError(f"import path {root} is not an ImageFolder ({exc})") from None
    if len(folder.classes) != info.num_classes:
        raise TeddyError(f"import path {root} has {len(folder.classes)} class folders, the dataset "
                         f"{info.name} has {info.num_classes}")
    chosen = []
    for c in range(info.num_classes):
        paths = sorted(i for i, (_, y) in enumerate(folder.samples) if y == c)
        if len(paths) < task.ipc:
            raise TeddyError(f"import path {root}: class folder {folder.classes[c]} has {len(paths)} images, "
                             f"fewer than IPC {task.ipc}")
        chosen += paths[: task.ipc]
    images, labels = [], []
    for i in chosen:
        path = folder.samples[i][0]
        try:
            x, y = folder[i]
        except Exception as exc:
            raise TeddyError(f"unreadable image in import path: {path} ({type(exc).__name__}: {exc})") from None
        images.append(x)
        labels.append(y)
    return Distilled(images=torch.stack(images), labels=torch.tensor(labels, dtype=torch.long),
                     log={"imported_from": str(root), "images": len(chosen)})
