"""Sorting ImageNet-1K's flat validation folder into class folders (teddy.imagenet_val and
tools/prepare_imagenet1k_val.py), on small stand-ins of the devkit and of Kaggle's CSV."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import REPO, write_class_folders
from PIL import Image
from scipy.io import savemat

import teddy.imagenet_val as iv
from teddy.datasets import load_split
from teddy.errors import TeddyError
from teddy.image_folder import check_tree

WNIDS = ["n01440764", "n01443537", "n01484850"]  # ILSVRC2012_IDs 1, 2, 3
PER_CLASS = 2
TOOL = REPO / "tools" / "prepare_imagenet1k_val.py"


def name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def ids() -> list[int]:
    """Image i (1-based) -> ILSVRC2012_ID: 1, 2, 3, 1, 2, 3."""
    return [(i % len(WNIDS)) + 1 for i in range(PER_CLASS * len(WNIDS))]


def write_flat_val(folder: Path, n: int = PER_CLASS * len(WNIDS)) -> Path:
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        Image.new("RGB", (8, 8), (40 * i % 256, 0, 0)).save(folder / name(i))
    return folder


def write_devkit(folder: Path, labels: list[int]) -> Path:
    """data/ILSVRC2012_validation_ground_truth.txt and data/meta.mat, with the fields of the real
    struct array `synsets`: the leaves (IDs 1..3) and one parent synset after them (ID 4)."""
    data = folder / "data"
    data.mkdir(parents=True)
    (data / iv.GROUND_TRUTH).write_text("".join(f"{k}\n" for k in labels))
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(k + 1, w, f"thing {k}", "a thing", 0, np.zeros((1, 0)), 0, 1300) for k, w in enumerate(WNIDS)]
    rows.append((len(WNIDS) + 1, "n00001740", "entity", "the top", len(WNIDS), np.arange(1, len(WNIDS) + 1), 18, 0))
    synsets = np.zeros((len(rows), 1), dtype=[(f, "O") for f in fields])
    for k, row in enumerate(rows):
        for f, value in zip(fields, row):
            synsets[k, 0][f] = value
    savemat(data / iv.META, {"synsets": synsets})
    return folder


def write_solution(path: Path, wnids: list[str]) -> Path:
    lines = ["ImageId,PredictionString"]
    lines += [f"{Path(name(i)).stem},{w} 10 12 40 50 {w} 1 2 3 4" for i, w in enumerate(wnids, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else p.stat().st_size)
            for p in sorted(root.rglob("*"))}


def tree(dest: Path) -> dict:
    return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(dest.iterdir()) if d.is_dir()}


def expected_tree() -> dict:
    return {w: sorted(name(i) for i, k in enumerate(ids(), start=1) if k == j + 1) for j, w in enumerate(WNIDS)}


def sort_devkit(tmp_path, **kw):
    return iv.sort_val_from(tmp_path / "val", devkit=tmp_path / "devkit", per_class=PER_CLASS,
                            classes=len(WNIDS), progress=False, **kw)


@pytest.fixture
def devkit_case(tmp_path):
    write_flat_val(tmp_path / "val")
    write_devkit(tmp_path / "devkit", ids())
    return tmp_path


def test_meta_mat_maps_the_leaf_ids_only(devkit_case):
    assert iv.devkit_wnids(devkit_case / "devkit" / "data" / iv.META, classes=3) == dict(enumerate(WNIDS, start=1))


def test_devkit_sorts_in_place_with_hard_links(devkit_case):
    val = devkit_case / "val"
    done = sort_devkit(devkit_case)
    assert (done.linked, done.copied, done.skipped) == (6, 0, 0)
    assert tree(val) == expected_tree()
    for wnid, files in expected_tree().items():
        for f in files:
            assert (val / f).is_file()  # the source stays
            assert os.path.samefile(val / f, val / wnid / f)  # a hard link: the same inode
    again = sort_devkit(devkit_case)
    assert (again.placed, again.skipped) == (0, 6)


def test_kaggle_csv_sorts_into_another_folder(tmp_path):
    val = write_flat_val(tmp_path / "flat")
    csv = write_solution(tmp_path / "LOC_val_solution.csv", [WNIDS[k - 1] for k in ids()])
    done = iv.sort_val_from(val, solution=csv, dest=tmp_path / "imagenet" / "val", per_class=PER_CLASS,
                            classes=3, progress=False)
    assert done.linked == 6
    assert tree(tmp_path / "imagenet" / "val") == expected_tree()
    assert sorted(p.name for p in val.iterdir()) == [name(i) for i in range(1, 7)]  # the flat folder is untouched


def test_copies_where_hard_links_fail(devkit_case, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(iv.os, "link", no_link)
    val = devkit_case / "val"
    done = sort_devkit(devkit_case)
    assert (done.linked, done.copied) == (0, 6)
    assert tree(val) == expected_tree()
    target = val / WNIDS[0] / name(1)
    assert not os.path.samefile(val / name(1), target)
    assert target.read_bytes() == (val / name(1)).read_bytes()


def unlabelled_image(case):
    Image.new("RGB", (8, 8)).save(case / "val" / name(7))


def wrong_count(case):
    (case / "devkit" / "data" / iv.GROUND_TRUTH).write_text("".join(f"{k}\n" for k in [1, 1, 3, 1, 2, 3]))


def missing_image(case):
    (case / "val" / name(6)).unlink()


def non_leaf_label(case):
    (case / "devkit" / "data" / iv.GROUND_TRUTH).write_text("".join(f"{k}\n" for k in [1, 2, 3, 1, 2, 4]))


def taken_target(case):
    (case / "val" / WNIDS[0]).mkdir()
    (case / "val" / WNIDS[0] / name(1)).write_bytes(b"something else")


def stray_image(case):
    (case / "val" / WNIDS[0]).mkdir()
    Image.new("RGB", (8, 8)).save(case / "val" / WNIDS[0] / "mine.JPEG")


@pytest.mark.parametrize("spoil, message", [
    (unlabelled_image, r"ILSVRC2012_val_00000007.JPEG has no ground-truth entry \(1 such"),
    (wrong_count, r"class n01440764 has 3 validation images, expected 2"),
    (missing_image, r"names ILSVRC2012_val_00000006, which is not in"),
    (non_leaf_label, r"line 6: label 4 has no wnid"),
    (taken_target, r"exists and differs from"),
    (stray_image, r"mine.JPEG is not an image of the ground truth"),
])
def test_each_refusal_is_one_line_and_writes_nothing(devkit_case, spoil, message):
    spoil(devkit_case)
    before = snapshot(devkit_case)
    with pytest.raises(TeddyError, match=message) as exc:
        sort_devkit(devkit_case)
    assert "\n" not in str(exc.value)
    assert snapshot(devkit_case) == before


def test_csv_label_without_wnid_is_refused(tmp_path):
    val = write_flat_val(tmp_path / "val")
    csv = write_solution(tmp_path / "LOC_val_solution.csv", [WNIDS[k - 1] for k in ids()])
    lines = csv.read_text().splitlines()
    lines[2] = f"{Path(name(2)).stem},"  # an empty PredictionString
    csv.write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    with pytest.raises(TeddyError, match=r"line 3: the label of ILSVRC2012_val_00000002 has no wnid"):
        iv.sort_val_from(val, solution=csv, per_class=PER_CLASS, classes=3, progress=False)
    assert snapshot(tmp_path) == before


def test_a_rerun_finishes_an_interrupted_run(devkit_case, monkeypatch):
    """The run dies during its third image, a copy half written: the final name never holds
    the partial file, and a second run places the rest."""
    real_copy = shutil.copy2
    calls = []

    def no_link(src, dst):
        raise OSError("no hard links here")

    def copy_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            Path(dst).write_bytes(Path(src).read_bytes()[:10])
            raise KeyboardInterrupt
        return real_copy(src, dst)

    monkeypatch.setattr(iv.os, "link", no_link)
    monkeypatch.setattr(iv.shutil, "copy2", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        sort_devkit(devkit_case)
    val = devkit_case / "val"
    placed = [p for p in val.glob("n*/*.JPEG")]
    assert len(placed) == 2 and all(p.stat().st_size == (val / p.name).stat().st_size for p in placed)
    assert len(list(val.glob(f"n*/.*{iv.PARTIAL}"))) == 1
    monkeypatch.undo()
    done = sort_devkit(devkit_case)
    assert (done.skipped, done.linked) == (2, 4)
    assert tree(val) == expected_tree()  # the leftover partial copy is gone


def run_tool(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, str(TOOL), *map(str, args), "--per-class", str(PER_CLASS), "--classes", "3"],
                          capture_output=True, text=True, env=env, timeout=60)


def test_the_command_line_tool(devkit_case):
    val = devkit_case / "val"
    proc = run_tool(val, "--devkit", devkit_case / "devkit")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        f"6 validation images in 3 class folders under {val}: 6 hard-linked, 0 copied, 0 already in place"]
    assert tree(val) == expected_tree()
    assert "6 already in place" in run_tool(val, "--devkit", devkit_case / "devkit").stdout
    missing_image(devkit_case)
    proc = run_tool(val, "--devkit", devkit_case / "devkit")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: the ground truth names")


def test_the_class_folder_reader_reads_the_sorted_split(devkit_case):
    root = devkit_case / "imagenet"
    write_class_folders(root, WNIDS, per_class=2, size=8, test_split="unused")
    shutil.rmtree(root / "unused")
    shutil.move(devkit_case / "val", root / "val")
    iv.sort_val_from(root / "val", devkit=devkit_case / "devkit", per_class=PER_CLASS, classes=3, progress=False)
    cfg = {"name": "image_folder", "root": str(root), "image_size": 8, "channels": 3,
           "mean": [0.5] * 3, "std": [0.5] * 3}
    assert check_tree(cfg) == {w: 2 for w in WNIDS}
    test = load_split(cfg, "test")
    assert len(test) == 6  # the flat files beside the class folders are not read
    assert sorted(test.targets.tolist()) == [0, 0, 1, 1, 2, 2]
    assert {Path(p).name: WNIDS[label] for p, label in test.base.samples} == {
        f: w for w, files in expected_tree().items() for f in files}
