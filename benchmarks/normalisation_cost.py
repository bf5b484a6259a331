"""How long does the normalisation step of a class-folder dataset take per image?

Cost of the first run's extra step on a class-folder dataset: rule normalisation opens every
image of both splits once (decode, convert, resize) and accumulates the training split's
per-channel sums. This measures it on a generated tree of JPEGs (ten classes, like the ImageNet
subsets) at a source size and a target size, and prints images per second, so the time of a
real tree follows from its image count (ImageNette: about 13,000 images in train/ and val/).

    .venv/bin/python benchmarks/normalisation_cost.py [--per-class 100] [--source 320] [--size 128]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import timed

from teddy.image_folder import compute_normalisation


def write_tree(root: Path, classes: int, per_class: int, source: int) -> int:
    rng = np.random.default_rng(0)
    n = 0
    for split, count in (("train", per_class), ("val", max(1, per_class // 10))):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for j in range(count):
                pixels = rng.integers(0, 256, (source, source * 4 // 3, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{j}.JPEG", quality=90)
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--source", type=int, default=320, help="short side of the generated JPEGs")
    parser.add_argument("--size", type=int, default=128, help="dataset.image_size")
    parser.add_argument("--resize", default="center_crop", choices=["stretch", "center_crop"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = write_tree(root, args.classes, args.per_class, args.source)
        cfg = {"name": "image_folder", "root": str(root), "image_size": args.size, "channels": 3,
               "resize": args.resize}
        _, seconds = timed(lambda: compute_normalisation(cfg))
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {sys.version.split()[0]}, "
          f"torch {torch.__version__}, 1 thread")
    print(f"{n} JPEGs of {args.source}x{args.source * 4 // 3} -> {args.size} px ({args.resize}): "
          f"{seconds:.1f} s, {n / seconds:.0f} images/s")


if __name__ == "__main__":
    main()
