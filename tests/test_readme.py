"""The README's own-dataset command, taken from the README as a user copies it, run on a
generated class-folder tree: dry-run here, end to end in the slow suite."""

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures import REPO, job_counts, write_class_folders
from teddy.distilled_set import load_set_tensors

MARKER = "<!-- own-data command"
PLACEHOLDER = "/data/my_images"


def readme_command(marker: str = MARKER) -> str:
    """The one-line shell command of the fenced block that follows `marker` in README.md."""
    text = (REPO / "README.md").read_text()
    assert marker in text, f"README.md lost its marked block ({marker})"
    block = re.search(r"```bash\n(.*?)```", text[text.index(marker):], flags=re.S)
    lines = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, f"the marked README block should be one command, not {lines}"
    return lines[0]


def user_checkout(tmp_path: Path) -> Path:
    """A directory that looks like the repository to a user's shell: the command's relative
    paths (.venv/bin/snakemake, config/, workflow/) resolve, and results/ lands here."""
    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "config", "workflow"):
        (work / name).symlink_to(REPO / name)
    return work


CLASSES = ["cat", "dog", "fox"]


def own_tree(tmp_path: Path) -> Path:
    # 12 training images a class: 11 after the 10% validation split, enough for IPC 10
    return write_class_folders(tmp_path / "my images", CLASSES, per_class=12, size=12, test_split="test",
                               per_class_test=3)


def run_readme_command(tmp_path: Path, *extra: str, timeout: int) -> tuple[subprocess.CompletedProcess, Path]:
    root = own_tree(tmp_path)
    command = readme_command()
    assert PLACEHOLDER in command, "the README's own-data command no longer names /data/my_images"
    # the user's one edit: their own root (quoted by YAML, so a path with a space works too)
    command = command.replace(PLACEHOLDER, f'"{root}"') + "".join(f" {e}" for e in extra)
    work = user_checkout(tmp_path)
    proc = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=timeout)
    return proc, work


def test_the_readme_block_is_the_documented_command():
    command = readme_command()
    assert command.startswith(".venv/bin/snakemake ") and "--configfile config/image_folder.yaml" in command
    cfg = yaml.safe_load((REPO / "config" / "image_folder.yaml").read_text())
    assert cfg["dataset"]["name"] == "image_folder" and cfg["gpus_per_job"] == 0


def test_readme_own_data_command_dry_runs_on_a_generated_tree(tmp_path):
    proc, _ = run_readme_command(tmp_path, "-n", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = yaml.safe_load((REPO / "config" / "image_folder.yaml").read_text())
    ev = cfg["evaluate"]
    cells = len(cfg["distill"]["methods"]) * len(cfg["distill"]["ipc"]) * len(ev["students"]) * len(ev["seeds"])
    counts = job_counts(proc.stdout)
    assert counts["normalisation"] == 1 and counts["evaluate"] == cells and counts["aggregate"] == 1


@pytest.mark.slow
def test_readme_own_data_command_runs_end_to_end(tmp_path):
    # one student seed instead of the config's two (a user's --config override, merged into the
    # file's evaluate section): every rule still runs; the dry run above checks the full grid
    proc, work = run_readme_command(tmp_path, "'evaluate={seeds: [0]}'", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = work / "results" / "my_images"
    classes = CLASSES
    stats = json.loads((results / "data" / "normalisation.json").read_text())
    assert stats["classes"] == classes and len(stats["mean"]) == len(stats["std"]) == 3
    assert stats["train_counts"] == {c: 12 for c in classes}
    images, labels, meta = load_set_tensors(results / "distilled" / "teddy" / "ipc10" / "meta.json")
    assert images.shape == (10 * len(classes), 3, 32, 32) and meta["class_names"] == classes
    assert sorted(labels.tolist()) == sorted(list(range(len(classes))) * 10)
    table = pd.read_csv(results / "tables" / "accuracy.csv")
    measured = table[table["kind"] == "measured"]
    cfg = yaml.safe_load((REPO / "config" / "image_folder.yaml").read_text())
    ipcs, students = cfg["distill"]["ipc"], cfg["evaluate"]["students"]
    assert len(measured) == len(cfg["distill"]["methods"]) * len(ipcs) * len(students)
    assert measured["mean"].between(0, 100).all() and (measured["seeds"] == 1).all()
    assert len(list((results / "eval").rglob("seed0.json"))) == len(measured) and not list(results.rglob("seed1.json"))
    assert (results / "tables" / "accuracy.md").is_file() and not list(results.rglob("*.tmp"))


def markdown_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True).stdout.split()
    return [REPO / f for f in tracked] or sorted(REPO.glob("*.md")) + sorted((REPO / "docs").rglob("*.md"))


def test_every_relative_link_of_the_documents_resolves_inside_the_repository():
    bad = []
    for page in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor within the page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists() or not path.is_relative_to(REPO):
                bad.append(f"{page.relative_to(REPO)}: {target}")
    assert not bad, f"links that do not resolve inside the repository: {bad}"


def test_nothing_in_the_repository_points_outside_it():
    tracked = subprocess.run(["git", "grep", "-l", "-F", "-e", "../shared", "--", ".", ":!tests/test_readme.py"],
                             cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not tracked, f"files that point outside the repository: {tracked}"


def test_the_docs_index_names_every_page():
    index = (REPO / "docs" / "README.md").read_text()
    pages = [p.name for p in (REPO / "docs").glob("*.md") if p.name != "README.md"]
    assert pages and not [p for p in pages if f"]({p})" not in index]
