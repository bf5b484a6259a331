"""The class-folder reader: any image dataset laid out as class folders. `dataset.name:
image_folder` is your own data; Tiny-ImageNet, ImageNet-1K and the ImageNet subsets of the
distillation literature (`imagenette`, `imagewoof`, ...) are presets of it, whose settings
(image size, resize, mean/std, class list) the registry holds (teddy.datasets). Tiny-ImageNet's
and ImageNet-1K's are fixed (the config cannot change them); the subsets' are defaults.

Layout: `<root>/train/<class>/...` and the test split the tables report, `<root>/test/<class>/...`
(or `<root>/val/<class>/...`, as ImageNet-1K and Tiny-ImageNet name it, read when there is no
test/); the validation split is held out of train/ (`dataset.val_fraction`), never a folder of its own;
images may sit in subfolders of a class folder (Tiny-ImageNet's `train/<wnid>/images/`), as
torchvision's ImageFolder reads them.
`dataset.classes` keeps only the listed class folders (e.g. WordNet ids), in that order; the
subset presets are such lists. Images are converted to the configured channels (L or RGB),
resized to `image_size` (stretched, or short side then centre crop) and normalised with the
config's `mean`/`std`, or with those that rule `normalisation` computed once from the training
split and cached as JSON (`dataset.normalisation_file`). That rule also opens every image once:
a file that is not an image stops it (`bad_images: fail`) or is listed and left out
(`bad_images: skip`), and images of another mode are counted and converted.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from teddy.data import DatasetInfo, FolderSubset
from teddy.dataset_specs import dataset_spec
from teddy.errors import TeddyError
from teddy.io import load_json, save_json


def _spec(dataset_cfg: dict):
    return dataset_spec(dataset_cfg["name"])


def is_folder_dataset(dataset_cfg: dict) -> bool:
    """Class folders whose facts come from the config and the tree (image_folder, the ImageNet
    subsets): their mean/std may need rule normalisation. Tiny-ImageNet and ImageNet-1K are read
    by this reader too, but their facts are fixed."""
    spec = _spec(dataset_cfg)
    return spec.preset is not None and spec.info is None


def setting(dataset_cfg: dict, key: str):
    """A setting of the class-folder reader (image_size, channels, resize, short_side, mean, std,
    classes, class_names, words_file): a fixed preset's value, else the dataset section's, else
    the preset's default."""
    spec = _spec(dataset_cfg)
    preset = spec.preset or {}
    if spec.info is None and key in dataset_cfg:
        return dataset_cfg[key]
    return preset.get(key)


def split_dir(dataset_cfg: dict, train: bool) -> Path:
    root = Path(dataset_cfg["root"])
    # the test split: test/ first, then val/ (ImageNet's and Tiny-ImageNet's name for it)
    candidates = [root / "train"] if train else [root / "test", root / "val"]
    for d in candidates:
        if d.is_dir():
            return d
    names = " or ".join(str(d) for d in candidates)
    raise TeddyError(f"dataset folder missing: {names} (config key dataset.root)")


def class_folders(dataset_cfg: dict) -> list[str]:
    """The class folder names in label order: dataset.classes, a subset preset, or all folders of
    train/ sorted (torchvision's ImageFolder order)."""
    classes = setting(dataset_cfg, "classes")
    if classes:
        return list(classes)
    return sorted(p.name for p in split_dir(dataset_cfg, True).iterdir() if p.is_dir())


def class_names(dataset_cfg: dict, folders: list[str]) -> list[str]:
    """Readable names: `dataset.class_names_file` (lines `<folder> <name>`, as ImageNet's
    LOC_synset_mapping.txt or Tiny-ImageNet's words.txt), the preset's names, the preset's
    `words_file` in the root when present (Tiny-ImageNet's words.txt), or the folders."""
    path = dataset_cfg.get("class_names_file")
    words = setting(dataset_cfg, "words_file")
    if not path and words and (Path(dataset_cfg["root"]) / words).is_file():
        path = Path(dataset_cfg["root"]) / words
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise TeddyError(f"cannot read {path} (config key dataset.class_names_file): {exc}") from None
        mapping = dict(line.strip().split(None, 1) for line in lines if len(line.split(None, 1)) == 2)
        return [mapping.get(f, f).split(",")[0].strip() for f in folders]
    names = setting(dataset_cfg, "class_names")
    if names and not dataset_cfg.get("classes"):
        return list(names)
    return list(folders)


def image_files(class_dir: Path) -> list[Path]:
    """Files torchvision's ImageFolder would take as images of the class (by extension, in the
    folder and its subfolders, links followed), sorted."""
    return sorted(Path(d) / f for d, _, files in os.walk(class_dir, followlinks=True)
                  for f in files if f.lower().endswith(IMG_EXTENSIONS))


# one walk of a split's class folders gives its image counts; they are kept in this process and in
# SCAN_FILE beside the normalisation file, and a later config load, resource function or job reads
# them back while the split's folder and its class folders keep their modification times (adding or
# removing files in a class folder changes its time; changes deeper in nested subfolders do not)
SCAN_FILE = "tree_scan.json"
_SCANS: dict[str, tuple[list, dict]] = {}


def _scan_path(dataset_cfg: dict) -> Path | None:
    path = dataset_cfg.get("normalisation_file")
    return Path(path).parent / SCAN_FILE if path else None


def _fingerprint(root: Path, folders: list[str]) -> list:
    return [root.stat().st_mtime_ns] + [(root / f).stat().st_mtime_ns if (root / f).is_dir() else None
                                        for f in folders]


def split_counts_by_class(dataset_cfg: dict, train: bool) -> dict[str, int]:
    """Image files of each selected class folder of the train (or test) split, present folders
    only, from one walk of the split, cached (SCAN_FILE): the config load, every resource function
    and every job read the same counts without walking the tree again."""
    root, folders = split_dir(dataset_cfg, train), class_folders(dataset_cfg)
    key = f"{root.resolve()}|{','.join(folders)}"
    fingerprint = _fingerprint(root, folders)
    cached = _SCANS.get(key)
    if cached is not None and cached[0] == fingerprint:
        return dict(cached[1])
    scan_file = _scan_path(dataset_cfg)
    stored = {}
    if scan_file is not None and scan_file.is_file():
        try:
            stored = load_json(scan_file)
        except TeddyError:
            stored = {}  # a corrupt cache is rebuilt
        entry = stored.get(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == fingerprint:
            _SCANS[key] = (fingerprint, dict(entry["counts"]))
            return dict(entry["counts"])
    counts = {f: len(image_files(root / f)) for f in folders if (root / f).is_dir()}
    _SCANS[key] = (fingerprint, counts)
    if scan_file is not None:
        try:
            save_json({**stored, key: {"fingerprint": fingerprint, "counts": counts}}, scan_file)
        except OSError:
            pass  # a read-only results folder: the counts stay in this process
    return dict(counts)


def train_counts(dataset_cfg: dict) -> list[int]:
    """Training images per class, in label order, as the reader will hold them (before the
    validation split): the image files of each class folder (split_counts_by_class) less those
    rule normalisation listed as unreadable."""
    root = split_dir(dataset_cfg, True)
    skipped = Counter()
    path = dataset_cfg.get("normalisation_file")
    if path and Path(path).is_file():
        for p in read_normalisation(path).get("skipped", []):
            rel = Path(p).relative_to(root) if Path(p).is_relative_to(root) else None
            if rel is not None:
                skipped[rel.parts[0]] += 1
    present = split_counts_by_class(dataset_cfg, True)
    counts = []
    for folder in class_folders(dataset_cfg):
        if folder not in present:
            raise TeddyError(f"class folder {root / folder} is missing (config key dataset.classes or "
                             f"dataset.name={dataset_cfg['name']})")
        counts.append(present[folder] - skipped[folder])
    return counts


def check_tree(dataset_cfg: dict, min_per_class: int = 1) -> dict[str, int]:
    """Check the class folders against the config: every selected folder exists in train/ and
    the test split, none is empty, each has at least `min_per_class` (the largest IPC) training
    images. Returns the training images per class. One TeddyError line per problem."""
    folders = class_folders(dataset_cfg)
    if len(set(folders)) != len(folders):
        raise TeddyError(f"dataset.classes lists a class folder twice: {folders}")
    counts = {}
    for split, train in (("train", True), ("test", False)):
        d = split_dir(dataset_cfg, train)
        missing = [f for f in folders if not (d / f).is_dir()]
        if missing:
            raise TeddyError(f"class folder(s) {missing} missing from {d} (config key dataset.classes or "
                             f"dataset.name={dataset_cfg['name']})")
        present = split_counts_by_class(dataset_cfg, train)
        for f in folders:
            n = present[f]
            if n == 0:
                raise TeddyError(f"empty class folder {d / f}: no image files")
            if train:
                counts[f] = n
    small = {f: n for f, n in counts.items() if n < min_per_class}
    if small:
        f, n = next(iter(small.items()))
        raise TeddyError(f"class '{f}' has {n} training images, fewer than the IPC {min_per_class} "
                         f"(config key distill.ipc; {len(small)} class(es) too small)")
    return counts


def read_normalisation(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TeddyError(f"cannot read the dataset normalisation {path} (rule normalisation): {exc}") from None


def folder_info(dataset_cfg: dict) -> DatasetInfo:
    """DatasetInfo from the config, the class folders and, when the config gives no mean/std,
    the cached normalisation file."""
    name = dataset_cfg["name"]
    channels, size = setting(dataset_cfg, "channels"), setting(dataset_cfg, "image_size")
    if channels is None or size is None:
        raise TeddyError(f"dataset.name={name} needs dataset.channels (1 or 3) and dataset.image_size")
    mean, std = setting(dataset_cfg, "mean"), setting(dataset_cfg, "std")
    if mean is None or std is None:
        path = dataset_cfg.get("normalisation_file")
        if not path:
            raise TeddyError("dataset.mean/std are not given and no dataset.normalisation_file to read them "
                             "from (the workflow sets it; rule normalisation computes it)")
        stats = read_normalisation(path)
        mean, std = stats["mean"], stats["std"]
    if len(mean) != channels or len(std) != channels:
        raise TeddyError(f"dataset.mean/std need {channels} values (dataset.channels), got {mean} / {std}")
    return DatasetInfo(name, len(class_folders(dataset_cfg)), int(channels), int(size), tuple(mean), tuple(std))


WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def convert_image(img, mode: str):
    """`img` in mode L or RGB. 16-bit greyscale (common in medical and scientific images) is
    rescaled from 0..65535 to 0..255 first: PIL's own conversion would clip it at 255. Mode I
    (32-bit integers, as some PNG readers give 16-bit files) is taken as 16-bit too."""
    from PIL import Image

    if img.mode in WIDE_INTEGER_MODES:
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide * (255 / 65535)), 0, 255).astype(np.uint8), "L")
    return img.convert(mode)


class ImageLoader:
    """PIL loader converting to the configured mode; names the file it cannot read.
    A class (not a closure) so that DataLoader worker processes can pickle it."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path):
        from PIL import Image

        try:
            with Image.open(path) as img:
                return convert_image(img, self.mode)
        except (OSError, ValueError, SyntaxError) as exc:
            raise TeddyError(f"not a readable image: {path} ({exc}; config key dataset.bad_images)") from None


def _transform(dataset_cfg: dict, mean=None, std=None):
    size = int(setting(dataset_cfg, "image_size"))
    if setting(dataset_cfg, "resize") == "center_crop":  # the short side to short_side (default: size), then the centre
        steps = [transforms.Resize(int(setting(dataset_cfg, "short_side") or size)), transforms.CenterCrop(size)]
    else:
        steps = [transforms.Resize((size, size))]
    steps.append(transforms.ToTensor())
    if mean is not None:
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def _image_folder(dataset_cfg: dict, train: bool, transform, skipped=()):
    folders = class_folders(dataset_cfg)
    root = split_dir(dataset_cfg, train)
    mode = "L" if int(setting(dataset_cfg, "channels")) == 1 else "RGB"
    try:
        ds = SelectedImageFolder(str(root), folders, {str(Path(p)) for p in skipped}, transform=transform,
                                 loader=ImageLoader(mode))
    except (FileNotFoundError, RuntimeError) as exc:
        raise TeddyError(f"bad ImageFolder tree {root}: {exc}") from None
    ds.targets = torch.as_tensor(ds.targets)
    ds.class_names = class_names(dataset_cfg, folders)
    return ds


class SelectedImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder over the given class folders only, in their order (the label
    order), leaving out the files in `skipped`. Module-level, so DataLoader workers can pickle it."""

    def __init__(self, root, folders, skipped, **kwargs):
        self.folders, self.skipped = list(folders), set(skipped)
        super().__init__(root, is_valid_file=self._keep, **kwargs)

    def _keep(self, path):
        return path.lower().endswith(IMG_EXTENSIONS) and str(Path(path)) not in self.skipped

    def find_classes(self, directory):
        return self.folders, {f: i for i, f in enumerate(self.folders)}


def read_class_folders(dataset_cfg: dict, train: bool, info: DatasetInfo) -> FolderSubset:
    """The reader: the train/ or val|test/ split, normalised, without the files rule
    normalisation skipped."""
    skipped = ()
    path = dataset_cfg.get("normalisation_file")
    if path and Path(path).is_file():
        skipped = read_normalisation(path).get("skipped", [])
    ds = _image_folder(dataset_cfg, train, _transform(dataset_cfg, info.mean, info.std), skipped)
    return FolderSubset(ds, torch.arange(len(ds)), int(dataset_cfg.get("num_workers", 0)))


def compute_normalisation(dataset_cfg: dict) -> dict:
    """Open every selected image of both splits once; per-channel mean and std of the training
    split's pixels in [0, 1] (after conversion and resizing, as the models see them). Unreadable
    files stop it or are listed under `skipped` (dataset.bad_images); images of another mode are
    counted under `converted`, files without an image extension (which torchvision's ImageFolder
    never reads) under `ignored`; each reported in one line."""
    from PIL import Image

    check_tree(dataset_cfg)
    policy = dataset_cfg.get("bad_images", "fail")
    channels = int(setting(dataset_cfg, "channels"))
    mode = "L" if channels == 1 else "RGB"
    transform = _transform(dataset_cfg)
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    skipped, ignored, converted, counts = [], [], Counter(), {}
    for train in (True, False):
        root = split_dir(dataset_cfg, train)
        files = [(f, p) for f in class_folders(dataset_cfg) for p in image_files(root / f)]
        ignored += [str(p) for f in class_folders(dataset_cfg) for p in sorted((root / f).iterdir())
                    if p.is_file() and not p.name.lower().endswith(IMG_EXTENSIONS)]
        for folder, path in tqdm(files, desc=f"normalisation {root.name}", file=sys.stderr, mininterval=5):
            try:
                with Image.open(path) as img:
                    if img.mode != mode:
                        converted[img.mode] += 1
                    img = convert_image(img, mode)
            except (OSError, ValueError, SyntaxError) as exc:
                if policy == "fail":
                    raise TeddyError(f"not a readable image: {path} ({exc}); set dataset.bad_images: skip "
                                     f"to leave such files out") from None
                skipped.append(str(path))
                continue
            if not train:
                continue
            counts[folder] = counts.get(folder, 0) + 1
            x = transform(img).to(torch.float64).flatten(1)
            total += x.sum(1)
            total_sq += (x * x).sum(1)
            pixels += x.shape[1]
    empty = [f for f in class_folders(dataset_cfg) if not counts.get(f)]
    if empty:
        raise TeddyError(f"no readable training image in class folder(s) {empty}")
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s) (dataset.bad_images: skip), e.g. {skipped[0]}",
              file=sys.stderr)
    if ignored:
        print(f"ignored {len(ignored)} file(s) without an image extension, e.g. {ignored[0]}", file=sys.stderr)
    if converted:
        print(f"converted {sum(converted.values())} image(s) to {mode} (modes found: {dict(converted)})",
              file=sys.stderr)
    return {"mean": mean.tolist(), "std": std.tolist(), "channels": channels,
            "image_size": int(setting(dataset_cfg, "image_size")), "classes": class_folders(dataset_cfg),
            "train_counts": counts, "skipped": skipped, "ignored": ignored, "converted": dict(converted)}
