"""`rded`: RDED (Sun, Shi, Yu, Lin, "On the Diversity and Realism of Distilled Dataset",
CVPR 2024; code LINs-lab/RDED), the optimisation-free baseline: real patches chosen by an
observer model and stitched together.

For each class:

1. `candidates_per_class` real images of the class are drawn at random (seeded; null: every
   image of the class).
2. Each gives `crops_per_image` random-resized crops, square (aspect ratio 1), area fraction in
   `crop_scale`, resized to `image_size // factor` pixels a side.
3. The observer (a member of the recipe's pool: the base model through a `single` pool by
   default, another member by `observer: <member name>`) scores every crop with the
   cross-entropy of the true class; each crop is zero-padded (in normalised space) to the full
   image size first, so the observer sees it at its native scale.
4. Each source image keeps its best-scored crop (lowest cross-entropy); of those, the
   `IPC x factor^2` best over the class are kept, so no source image gives two patches.
5. The kept patches, in rank order, are tiled `factor x factor` into IPC images at full
   resolution: tile k (row-major) of image i holds patch number k * IPC + i, so every image
   gets one patch from each band of the ranking.

Followed from the peer code (LINs-lab/RDED, synthesize/main.py and synthesize/utils.py) where
the paper is vague: the number of candidates (their `mipc`, 300 in every published script),
five crops per image (`num_crop`), RandomResizedCrop's default area range (0.08, 1) with ratio
fixed to 1, zero-padding of the crop before scoring, the per-image best crop then the
class-wide top `IPC x factor^2`, and the interleaved tile order of their `mix_images`; factor 2
at ImageNet resolution and 1 for CIFAR and Tiny-ImageNet, as in their scripts. One departure:
the peers crop the raw decoded JPEG at its own resolution; here crops are taken from the
pipeline's real images (already resized, e.g. 256 then centre 224 on ImageNet-1K), so every
method reads the same real data. A factor that does not divide the image size is refused (the
peers spread the remainder over the first tiles) so that every tile is exactly one patch.

Labels: the synthetic images carry their class as label; soft labels come from the teacher in
the student loop like every other method's (benchmarks/rded_labels.py measures the region-wise
alternative and says why the whole-image output is the default).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import resized_crop
from tqdm import tqdm

from teddy.data import TensorImageDataset, batches, draw_indices
from teddy.errors import TeddyError
from teddy.methods.base import Distilled, DistillTask, real_indices_per_class
from teddy.methods.registry import RecipeContext, full_recipe, register_method

# the peers' settings (LINs-lab/RDED argument.py and scripts/*.sh), registered below
DEFAULTS = {"factor": 1, "crops_per_image": 5, "candidates_per_class": 300, "crop_scale": [0.08, 1.0],
            "batch_size": 100}


def check_recipe(recipe: dict, image_size: int, ipcs, pool_members: list[str] | None, key: str) -> None:
    """The checks that need the dataset and the pool (run when the workflow loads, and again
    by `distill`): factor divides the image size, the observer is a pool member, enough
    candidates per class for IPC x factor^2 patches from distinct images."""
    s = full_recipe(recipe, "rded")
    factor = int(s["factor"])
    if factor < 1 or image_size % factor:
        raise TeddyError(f"{key}.factor={factor} does not divide the image size {image_size}")
    if pool_members is not None:
        if not pool_members:
            raise TeddyError(f"rded scores crops with an observer model: {key}.pool must name a pool with members "
                             f"on disk (generator single for the base model)")
        observer = recipe.get("observer")
        if observer is None and len(pool_members) != 1:
            raise TeddyError(f"{key}.observer is not set and pool has {len(pool_members)} members "
                             f"{pool_members}: name the observer")
        if observer is not None and observer not in pool_members:
            raise TeddyError(f"{key}.observer '{observer}' is not a member of the recipe's pool "
                             f"(members: {pool_members}; the base model is 'base' of a single pool)")
    cap = s["candidates_per_class"]
    for ipc in ipcs:
        if cap is not None and int(cap) < int(ipc) * factor ** 2:
            raise TeddyError(f"{key}.candidates_per_class={cap} is below IPC x factor^2 = {int(ipc) * factor ** 2} "
                             f"(one patch per source image)")


def check_config(recipe: dict, ctx: RecipeContext) -> None:
    """At config load: check_recipe, then the candidates and the distinct images per class that
    IPC x factor^2 patches need, against the smallest class after the validation split."""
    check_recipe(recipe, ctx.image_size, ctx.ipcs, ctx.pool_members if ctx.pool_members is not None else [], ctx.key)
    if ctx.smallest_class is None:
        return
    full = full_recipe(recipe, "rded")
    cap, factor = full.get("candidates_per_class"), int(full.get("factor", 1))
    if cap is not None and int(cap) > ctx.smallest_class:
        raise TeddyError(f"{ctx.key}.candidates_per_class={cap} is above {ctx.where}")
    needed = max(int(i) for i in ctx.ipcs) * factor ** 2
    if needed > ctx.smallest_class:
        raise TeddyError(f"{ctx.key} needs IPC x factor^2 = {needed} distinct images per class, above {ctx.where}")


def observer_model(task: DistillTask) -> torch.nn.Module:
    pool = task.pool
    names = list(getattr(pool, "names", [])) if getattr(pool, "members", None) else []
    check_recipe(task.recipe, task.info.image_size, [task.ipc], names, "rded recipe")
    observer = task.recipe.get("observer")
    model = pool.members[names.index(observer) if observer is not None else 0]
    return model.to(task.device).eval()


def random_square_crops(images: torch.Tensor, crops: int, patch: int, scale, generator: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`crops` random-resized square crops of every image (N x crops x C x patch x patch) and
    their boxes (N x crops x 4: top, left, height, width). Box sampling is torchvision's
    RandomResizedCrop.get_params, fed from a private RNG seeded from `generator`."""
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    out = images.new_empty(len(images), crops, images.shape[1], patch, patch)
    boxes = torch.empty(len(images), crops, 4, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, img in enumerate(images):
            for j in range(crops):
                box = RandomResizedCrop.get_params(img, scale=list(scale), ratio=[1.0, 1.0])
                out[i, j] = resized_crop(img, *box, [patch, patch], antialias=True)
                boxes[i, j] = torch.tensor(box)
    return out, boxes


def pad_to(patches: torch.Tensor, size: int) -> torch.Tensor:
    """Centre the patches on a zero (normalised: mean-valued) canvas of `size` x `size`."""
    extra = size - patches.shape[-1]
    before = extra // 2
    return F.pad(patches, (before, extra - before, before, extra - before))


@torch.no_grad()
def patch_scores(observer: torch.nn.Module, patches: torch.Tensor, labels: torch.Tensor, image_size: int,
                 device: torch.device, batch_size: int) -> torch.Tensor:
    """Cross-entropy of the true class for each patch, padded to the full size (lower is better)."""
    data = TensorImageDataset(pad_to(patches, image_size), labels, [])
    out = [F.cross_entropy(observer(x).float(), y, reduction="none").cpu()
           for x, y in batches(data, batch_size, False, None, device)]
    return torch.cat(out)


def select_patches(observer: torch.nn.Module, images: torch.Tensor, label: int, count: int, s: dict,
                   image_size: int, device: torch.device, generator: torch.Generator) -> dict:
    """One class: the `count` best patches from distinct source images, best first.
    Returns patches, their scores, the index of their source image in `images`, their boxes."""
    factor, crops = int(s["factor"]), int(s["crops_per_image"])
    patches, boxes = random_square_crops(images, crops, image_size // factor, s["crop_scale"], generator)
    flat = patches.flatten(0, 1)
    scores = patch_scores(observer, flat, torch.full((len(flat),), label), image_size, device,
                          int(s["batch_size"])).view(len(images), crops)
    best_score, best_crop = scores.min(dim=1)
    order = torch.argsort(best_score, stable=True)[:count]
    rows = torch.arange(len(images))[order]
    return {"patches": patches[rows, best_crop[order]], "scores": best_score[order], "sources": rows,
            "boxes": boxes[rows, best_crop[order]]}


def stitch(patches: torch.Tensor, factor: int, ipc: int) -> torch.Tensor:
    """IPC images from `ipc * factor^2` patches in rank order: tile k of image i is patch k*ipc + i."""
    n, c, p, _ = patches.shape
    if n != ipc * factor ** 2:
        raise ValueError(f"stitch needs {ipc * factor ** 2} patches, got {n}")
    # (row, col, image, C, p, p) -> (image, C, row, p, col, p)
    grid = patches.view(factor, factor, ipc, c, p, p).permute(2, 3, 0, 4, 1, 5)
    return grid.reshape(ipc, c, factor * p, factor * p)


def class_batches(real, chosen: list[torch.Tensor], device: torch.device):
    """The chosen real images of each class in turn, as one batch per class. Image folders are
    read by one DataLoader over every class (the dataset's `num_workers` processes decode ahead,
    as the peers' loader does), not image by image."""
    if isinstance(real, TensorImageDataset):
        for idx in chosen:
            yield real.images[idx].to(device)
        return
    bounds = torch.cumsum(torch.tensor([0] + [len(idx) for idx in chosen]), 0).tolist()
    loader = DataLoader(real.subset(torch.cat(chosen)), batch_sampler=[range(a, b) for a, b in zip(bounds, bounds[1:])],
                        num_workers=getattr(real, "num_workers", 0), pin_memory=device.type == "cuda")
    for x, _ in loader:
        yield x.to(device, non_blocking=True)


# the recipe keys only rded reads (its part of the config schema)
RECIPE_KEYS = {
    "observer": {"type": "string", "description": "rded: the pool member that scores crops (default: the pool's only member, e.g. base of a single pool)"},
    "factor": {"type": "integer", "minimum": 1, "description": "rded: patches per side of a synthetic image (default 1; must divide the image size)"},
    "crops_per_image": {"type": "integer", "minimum": 1, "description": "rded: random crops scored per real image (default 5)"},
    "candidates_per_class": {"type": ["integer", "null"], "minimum": 1, "description": "rded: random real images per class whose crops are scored (default 300; null: all)"},
    "crop_scale": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "minItems": 2, "maxItems": 2, "description": "rded: area fraction range of the random-resized crops (default 0.08, 1.0)"},
    "batch_size": {"type": "integer", "minimum": 1},
}

@register_method("rded", recipe_keys=RECIPE_KEYS, check=check_config, per_batch=False, defaults=DEFAULTS)
def distill(task: DistillTask) -> Distilled:
    s = task.recipe
    observer = observer_model(task)
    factor, size = int(s["factor"]), task.info.image_size
    needed = task.ipc * factor ** 2
    cap = s["candidates_per_class"]
    generator = torch.Generator().manual_seed(task.seed)
    chosen = []
    for c, idx in enumerate(real_indices_per_class(task)):
        wanted = len(idx) if cap is None else int(cap)
        if len(idx) < max(wanted, needed):
            raise TeddyError(f"class {c} has {len(idx)} real images, fewer than the {max(wanted, needed)} asked for "
                             f"(rded recipe keys candidates_per_class, IPC x factor^2)")
        chosen.append(draw_indices(idx, wanted, generator))
    images, labels, class_scores = [], [], []
    for c, real in enumerate(tqdm(class_batches(task.real, chosen, task.device), total=len(chosen),
                                  desc="rded classes", file=sys.stderr, mininterval=5)):
        picked = select_patches(observer, real, c, needed, s, size, task.device, generator)
        images.append(stitch(picked["patches"], factor, task.ipc).cpu())
        labels.append(torch.full((task.ipc,), c, dtype=torch.long))
        class_scores.append(picked["scores"])
    scores = torch.cat(class_scores)
    return Distilled(torch.cat(images), torch.cat(labels),
                     {"factor": factor, "patches": int(scores.numel()), "settings": {k: s[k] for k in DEFAULTS},
                      "selected_cross_entropy": {"mean": scores.mean().item(), "max": scores.max().item()}})
