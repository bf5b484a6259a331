"""A distill shard's files, and the gather that assembles the shards into one distilled set.

    <set>/shards/<k>/images/<class_folder>/<j>.png   the shard's images, written batch by batch
    <set>/shards/<k>/batches/<b>.json               one per finished batch: its files, log, settings
    <set>/shards/<k>/distill.ckpt                    the current batch's optimiser checkpoint
    <set>/shards/<k>/done.json                       written last: the shard's batches and files
    <set>/images/..., meta.json, grid.png, log.json  written by the gather (teddy.distilled_set format)

A shard started again skips every batch whose marker was written under the same settings, and
resumes the current one from its checkpoint: a killed shard redoes at most one batch. The
gather hard-links the shards' PNGs into images/ (no second copy of a large set).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from teddy.distilled_set import class_folder, image_name, write_images, write_meta
from teddy.errors import TeddyError
from teddy.io import atomic_path, load_json, save_json
from teddy.resume import remove_checkpoint


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class ShardWriter:
    """Writes one shard's batches as they come (`write_batch`, the harness's on_batch), then done.json."""

    def __init__(self, shard_dir, settings: dict, mean, std, checkpoint=None):
        self.dir, self.checkpoint = Path(shard_dir), checkpoint
        self.settings, self.hash = settings, settings_hash(settings)
        self.mean, self.std = mean, std
        self.started = time.perf_counter()

    def marker(self, batch: int) -> Path:
        return self.dir / "batches" / f"{int(batch)}.json"

    def done(self, batch: int) -> bool:
        """Whether the batch was finished by an earlier start of this shard, under the same settings,
        and its images are all still there."""
        path = self.marker(batch)
        if not path.is_file():
            return False
        try:
            marker = load_json(path)
        except TeddyError:  # a marker damaged by a crash: redo the batch
            return False
        return marker.get("settings_hash") == self.hash and all(
            (self.dir / "images" / rel).is_file() for rel in marker.get("files", []))

    def write_batch(self, batch) -> None:
        files = write_images(self.dir / "images", batch.images, batch.labels, batch.index_in_class.tolist(),
                             self.mean, self.std)
        now = time.perf_counter()
        save_json({"batch": batch.index, "files": files, "seconds": now - self.started, "log": batch.log,
                   "settings_hash": self.hash}, self.marker(batch.index))  # after its PNGs: the batch is done
        remove_checkpoint(self.checkpoint)  # the next batch starts clean
        self.started = now

    def finish(self, shard: int, batches, class_names) -> dict:
        markers = [load_json(self.marker(b)) for b in batches]
        done = {"shard": int(shard), "batches": [int(b) for b in batches],
                "files": [f for m in markers for f in m["files"]], "class_names": list(class_names),
                "seconds": sum(float(m["seconds"]) for m in markers), "batch_logs": [m["log"] for m in markers],
                "settings": self.settings}
        save_json(done, self.dir / "done.json")
        return done


def check_shards(dones: list[dict], shard_dirs, num_batches: int, what: str) -> None:
    """Every batch in exactly one shard, every listed file on disk and listed once; one line otherwise."""
    shards = Counter(int(d["shard"]) for d in dones)
    twice = sorted(k for k, n in shards.items() if n > 1)
    if twice:
        raise TeddyError(f"gather {what}: shard {twice[0]} given twice")
    owner: dict[int, int] = {}
    for d in dones:
        for b in d["batches"]:
            if b in owner:
                raise TeddyError(f"gather {what}: batch {b} is in shards {owner[b]} and {d['shard']} (duplicated)")
            owner[b] = int(d["shard"])
    missing = sorted(set(range(num_batches)) - set(owner))
    if missing:
        raise TeddyError(f"gather {what}: batches {missing[:5]}{'...' if len(missing) > 5 else ''} of "
                         f"{num_batches} are in no shard given (a shard missing?)")
    seen: dict[str, int] = {}
    for d, shard_dir in zip(dones, shard_dirs):
        for rel in d["files"]:
            if rel in seen:
                raise TeddyError(f"gather {what}: image {rel} written by shards {seen[rel]} and {d['shard']}")
            seen[rel] = int(d["shard"])
            if not (Path(shard_dir) / "images" / rel).is_file():
                raise TeddyError(f"gather {what}: {Path(shard_dir) / 'images' / rel} listed in done.json is missing")


def link_images(dones: list[dict], shard_dirs, images_dir) -> None:
    """Hard-link (copy where the filesystem cannot link) every shard image into images_dir, built
    beside it and renamed into place, so no half-assembled images/ is ever there."""
    images_dir = Path(images_dir)
    tmp = images_dir.parent / f".{images_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for d, shard_dir in zip(dones, shard_dirs):
        for rel in d["files"]:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(Path(shard_dir) / "images" / rel, target)
            except OSError:
                shutil.copy2(Path(shard_dir) / "images" / rel, target)
    shutil.rmtree(images_dir, ignore_errors=True)
    os.replace(tmp, images_dir)


def sample_grid(images_dir, class_names, ipc: int, out_png, max_classes: int = 10, max_images: int = 10) -> None:
    """A bounded grid: up to `max_classes` classes spread over the set, one row each with up to
    `max_images` of its images, the class name written left of its row."""
    images_dir = Path(images_dir)
    classes = sorted(set(np.linspace(0, len(class_names) - 1, min(max_classes, len(class_names))).round().astype(int)))
    per_row = min(max_images, int(ipc))
    rows = [[Image.open(images_dir / class_folder(c) / image_name(j)).convert("RGB") for j in range(per_row)]
            for c in classes]
    size = rows[0][0].width
    label_width = 8 + 6 * min(24, max(len(str(class_names[c])) for c in classes))
    canvas = Image.new("RGB", (label_width + per_row * (size + 2), len(rows) * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (c, row) in enumerate(zip(classes, rows)):
        top = r * (size + 2)
        draw.text((4, top + max(0, size // 2 - 5)), f"{c}: {class_names[c]}"[:24], fill="black")
        for i, image in enumerate(row):
            canvas.paste(image, (label_width + i * (size + 2), top))
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")


def gather(shard_dirs, set_dir, grid_out, log_out, *, method: str, ipc: int, num_batches: int, info) -> dict:
    """Check the shards, assemble set_dir/images, then write meta.json, the sample grid and log.json."""
    what = f"{method} ipc{ipc}"
    shard_dirs = [Path(d) for d in shard_dirs]
    dones = [load_json(d / "done.json") for d in shard_dirs]
    check_shards(dones, shard_dirs, num_batches, what)
    set_dir = Path(set_dir)
    link_images(dones, shard_dirs, set_dir / "images")
    first = min(dones, key=lambda d: d["shard"])
    settings = first["settings"]
    meta = write_meta(set_dir, method=method, ipc=int(ipc), class_names=first["class_names"], mean=info.mean,
                      std=info.std, channels=info.channels, image_size=info.image_size,
                      config={k: settings[k] for k in ("recipe", "dataset", "pool") if k in settings},
                      extra={"shards": len(dones), "batches": int(num_batches)})
    sample_grid(set_dir / "images", first["class_names"], int(ipc), grid_out)
    ordered = sorted(dones, key=lambda d: d["shard"])
    log = {"method": method, "ipc": int(ipc), "seconds": sum(float(d["seconds"]) for d in ordered),
           "shards": [{"shard": d["shard"], "batches": d["batches"], "seconds": d["seconds"]} for d in ordered],
           "batches": [b for d in ordered for b in d["batch_logs"]], "set_hash": meta["set_hash"]}
    save_json(log, log_out)
    return log
