"""Sort ImageNet-1K's official flat validation folder into class folders.

The official archive ILSVRC2012_img_val.tar unpacks to one flat folder of 50,000 images
(ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG). The class-folder reader
(teddy.image_folder) wants `val/<wnid>/<file>`. The labels come from one of two sources:

- the devkit (ILSVRC2012_devkit_t12): data/ILSVRC2012_validation_ground_truth.txt holds one
  ILSVRC2012_ID per line (line i is image i), and data/meta.mat maps each ID to its WordNet id
  (the struct array `synsets`; the 1000 leaf classes have the IDs 1..1000);
- Kaggle's LOC_val_solution.csv: rows `ImageId,PredictionString`, the class being the first
  token of the prediction string.

The images are hard-linked into `<dest>/<wnid>/` (copied where linking fails, e.g. across file
systems); the flat files stay where they are. Every check runs before anything is written, so a
bad ground truth changes nothing on disk. A rerun after an interruption finishes the job: files
already at their place with the source's size are skipped, and a copy is written under a
temporary name first, so a partial file never carries a final name.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from teddy.errors import TeddyError

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
IMAGE_SUFFIXES = (".jpeg", ".jpg")
WNID = re.compile(r"^n\d{8}$")
PARTIAL = ".partial"  # suffix of a copy in progress: no image extension, so no reader takes it


@dataclass
class Placed:
    """What a run did: images placed now (hard-linked or copied), and images already in place."""

    linked: int = 0
    copied: int = 0
    skipped: int = 0

    @property
    def placed(self) -> int:
        return self.linked + self.copied


def _devkit_file(devkit: Path, name: str) -> Path:
    for path in (devkit / "data" / name, devkit / name):
        if path.is_file():
            return path
    raise TeddyError(f"no {name} in the devkit folder {devkit} (looked in {devkit / 'data'} and {devkit})")


def devkit_wnids(meta_path, classes: int = 1000) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id of the leaf classes (IDs 1..classes) of the devkit's meta.mat."""
    import numpy as np
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta_path), squeeze_me=True)["synsets"]
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise TeddyError(f"cannot read the synsets of {meta_path}: {exc}") from None
    synsets = np.atleast_1d(synsets)
    if synsets.dtype.names is None or not {"ILSVRC2012_ID", "WNID"} <= set(synsets.dtype.names):
        raise TeddyError(f"{meta_path}: `synsets` has no fields ILSVRC2012_ID and WNID")
    mapping = {}
    for entry in synsets:
        index, wnid = int(entry["ILSVRC2012_ID"]), str(entry["WNID"])
        if 1 <= index <= classes:
            mapping[index] = wnid
    return mapping


def devkit_labels(devkit, classes: int = 1000) -> dict[str, str]:
    """Image name without extension (ILSVRC2012_val_00000001) -> WordNet id, from the devkit."""
    devkit = Path(devkit)
    truth, meta = _devkit_file(devkit, GROUND_TRUTH), _devkit_file(devkit, META)
    wnids = devkit_wnids(meta, classes)
    labels = {}
    lines = truth.read_text().split()
    for number, field in enumerate(lines, start=1):
        try:
            index = int(field)
        except ValueError:
            raise TeddyError(f"{truth} line {number}: '{field}' is not an ILSVRC2012_ID") from None
        if index not in wnids:
            unknown = sorted({int(f) for f in lines if f.lstrip("-").isdigit() and int(f) not in wnids})
            raise TeddyError(f"{truth} line {number}: label {index} has no wnid among the {classes} leaf classes "
                             f"of {meta} ({len(unknown)} such label value(s), e.g. {unknown[:5]})")
        labels[f"ILSVRC2012_val_{number:08d}"] = wnids[index]
    return labels


def solution_labels(csv_path) -> dict[str, str]:
    """Image name without extension -> WordNet id, from Kaggle's LOC_val_solution.csv."""
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise TeddyError(f"cannot read {csv_path}: {exc}") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise TeddyError(f"{csv_path} is not a LOC_val_solution.csv (no header ImageId,PredictionString)")
    labels = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        image = row[0].strip()
        tokens = row[1].split() if len(row) > 1 else []
        if not tokens or not WNID.match(tokens[0]):
            raise TeddyError(f"{csv_path} line {number}: the label of {image} has no wnid "
                             f"(first token of PredictionString: {tokens[0] if tokens else 'none'})")
        if image in labels:
            raise TeddyError(f"{csv_path} line {number}: {image} is listed twice")
        labels[image] = tokens[0]
    return labels


def flat_images(val_dir: Path) -> dict[str, str]:
    """Image name without extension -> file name, for the images directly in `val_dir`."""
    if not val_dir.is_dir():
        raise TeddyError(f"no validation folder {val_dir}")
    return {p.stem: p.name for p in val_dir.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def plan(val_dir, labels: dict[str, str], dest=None, per_class: int = 50,
         classes: int = 1000) -> list[tuple[Path, Path]]:
    """(source, target) of every image, after every check; raises one TeddyError line when the
    folder and the ground truth disagree, a class has the wrong count, or a target is taken."""
    val_dir = Path(val_dir)
    dest = Path(dest) if dest is not None else val_dir
    files = flat_images(val_dir)
    unlabelled = sorted(set(files) - set(labels))
    if unlabelled:
        raise TeddyError(f"{val_dir / files[unlabelled[0]]} has no ground-truth entry "
                         f"({len(unlabelled)} such image(s)); nothing was written")
    missing = sorted(set(labels) - set(files))
    if missing:
        raise TeddyError(f"the ground truth names {missing[0]}, which is not in {val_dir} "
                         f"({len(missing)} missing image(s)); nothing was written")
    counts = Counter(labels.values())
    if len(counts) != classes:
        raise TeddyError(f"the ground truth has {len(counts)} classes, expected {classes}; nothing was written")
    wrong = {w: n for w, n in sorted(counts.items()) if n != per_class}
    if wrong:
        wnid, n = next(iter(wrong.items()))
        raise TeddyError(f"class {wnid} has {n} validation images, expected {per_class} "
                         f"({len(wrong)} class(es) off); nothing was written")
    pairs = [(val_dir / files[stem], dest / wnid / files[stem]) for stem, wnid in sorted(labels.items())]
    for src, target in pairs:
        if target.exists() and not _in_place(src, target):
            raise TeddyError(f"{target} exists and differs from {src} (remove it and run again); nothing was written")
    wanted = {target for _, target in pairs}
    for wnid in counts:
        folder = dest / wnid
        if folder.is_dir():
            extra = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p not in wanted)
            if extra:
                raise TeddyError(f"{extra[0]} is not an image of the ground truth ({len(extra)} such file(s) in "
                                 f"{folder}); nothing was written")
    return pairs


def _in_place(src: Path, target: Path) -> bool:
    """The target is done: the same file (a hard link) or one of the same size (a finished copy)."""
    try:
        s, t = src.stat(), target.stat()
    except OSError:
        return False
    return (s.st_dev, s.st_ino) == (t.st_dev, t.st_ino) or s.st_size == t.st_size


def place(src: Path, target: Path) -> str:
    """Hard-link src to target (atomic: a link is never partial), else copy it under a temporary
    name and rename that into place. Returns 'linked' or 'copied'."""
    try:
        os.link(src, target)
        return "linked"
    except FileExistsError:
        raise
    except OSError:
        pass
    partial = target.with_name(f".{target.name}{PARTIAL}")
    shutil.copy2(src, partial)
    os.replace(partial, target)
    return "copied"


def sort_val(val_dir, labels: dict[str, str], dest=None, per_class: int = 50, classes: int = 1000,
             progress: bool = True) -> Placed:
    """Place every image of the flat `val_dir` at `<dest>/<wnid>/<file>` (dest defaults to
    val_dir itself); see the module docstring."""
    pairs = plan(val_dir, labels, dest, per_class, classes)
    done = Placed()
    for folder in sorted({target.parent for _, target in pairs}):
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f".*{PARTIAL}"):  # a copy an interruption cut short
            leftover.unlink()
    for src, target in tqdm(pairs, desc="placing", unit="img", file=sys.stderr, mininterval=1,
                            disable=None if progress else True):
        if target.exists() and _in_place(src, target):
            done.skipped += 1
            continue
        if place(src, target) == "linked":
            done.linked += 1
        else:
            done.copied += 1
    return done


def sort_val_from(val_dir, devkit=None, solution=None, dest=None, per_class: int = 50, classes: int = 1000,
                  progress: bool = True) -> Placed:
    """sort_val with the labels of the devkit folder or of Kaggle's LOC_val_solution.csv (one of them)."""
    if (devkit is None) == (solution is None):
        raise TeddyError("give the devkit folder or LOC_val_solution.csv (one of the two)")
    labels = devkit_labels(devkit, classes) if devkit is not None else solution_labels(solution)
    return sort_val(val_dir, labels, dest, per_class, classes, progress)
