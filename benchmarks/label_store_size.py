"""How large is a stored-label file, predicted against measured?

Stored-label disk size: predicted (teddy.label_store.predicted_bytes_per_epoch, the README
formula) against measured, on a generated 100-class 32-pixel set, plus the formula's
projection for ImageNet-1K.

    PYTHONPATH=src .venv/bin/python benchmarks/label_store_size.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from teddy.data import DatasetInfo, TensorImageDataset
from teddy.label_store import epoch_path, predicted_bytes_per_epoch, write_label_store
from teddy.models import build_model


def main() -> None:
    torch.set_num_threads(1)
    classes, ipc, epochs = 100, 10, 3
    n = classes * ipc
    data = TensorImageDataset(torch.randn(n, 3, 32, 32), torch.arange(n) % classes, [str(c) for c in range(classes)])
    teacher = build_model("convnet", classes, 3, 32, depth=2, width=16).eval()
    recipe = {"epochs": epochs, "batch_size": 100, "lr": 1e-3,
              "augment": {"crop": True, "crop_scale": [0.08, 1.0], "flip": True, "cutmix": 1.0}}
    print("| images | classes | keep_topk | predicted per epoch (B) | measured per epoch (B) | overhead (B) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (10, 100):
            meta = Path(tmp) / f"k{k}/meta.json"
            write_label_store(meta, data, teacher, recipe, 0, torch.device("cpu"), DatasetInfo("toy", classes, 3, 32, None, None), set_hash="x", keep_topk=k)
            measured = sum(epoch_path(meta.parent, e).stat().st_size for e in range(epochs)) / epochs
            predicted = predicted_bytes_per_epoch(n, classes, k, crop=True, mix=True)
            print(f"| {n} | {classes} | {k} | {predicted} | {measured:.0f} | {measured - predicted:.0f} |")
    print()
    print("ImageNet-1K, 300 epochs, crop + CutMix (formula only):")
    print("| IPC | keep_topk | per epoch (MB) | per seed, 300 epochs (GB) |")
    print("|---|---|---|---|")
    for ipc in (10, 50, 100):
        for k in (100, 1000):
            per_epoch = predicted_bytes_per_epoch(ipc * 1000, 1000, k, crop=True, mix=True)
            print(f"| {ipc} | {k} | {per_epoch / 1e6:.1f} | {per_epoch * 300 / 1e9:.2f} |")


if __name__ == "__main__":
    main()
