"""The real Snakemake DAG, run as a subprocess (as a user would) on a tiny IDX fixture."""

import base64
import json
import stat
from pathlib import Path

import pandas as pd
import pytest
from fixtures import set_protocol, snakemake, tiny_config, write_class_folders, write_fashion_mnist, write_workdir
from torchvision.datasets import ImageFolder

from teddy.distilled_set import load_set_tensors
from teddy.jobs import eval_cell


def assert_modes_follow_umask(root: Path, umask: int) -> None:
    """Every file a run wrote has the mode open() gives under `umask`, every folder mkdir's."""
    wrong = [(str(p.relative_to(root)), oct(stat.S_IMODE(p.stat().st_mode))) for p in root.rglob("*")
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask]
    assert not wrong, f"modes other than umask {umask:03o} gives: {wrong[:10]}"


# umask 002 (a group-shared results folder): every output must come out group-writable, 0664;
# the 022 case is checked on a shorter run in test_outputs_honour_umask_022
@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=200, n_test=60)
    cfg = tiny_config(data)
    # teddy at IPC 2: two batches of 10, one shard (job) each; random and IPC 1: one shard
    cfg["distill"]["batches_per_shard"] = 1
    cfg["distill"]["methods"]["teddy"]["batch_size"] = 10
    work = write_workdir(tmp_path / "work", cfg)
    proc = snakemake(work, "--cores", "2", umask=0o002)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    R = work / "results" / "tiny"
    assert_modes_follow_umask(R, 0o002)

    base = json.loads((R / "base/convnet/metrics.json").read_text())
    assert 0 <= base["test_accuracy"] <= 1 and len(base["history"]) == 3
    assert not (R / "base/convnet/train.ckpt").exists()  # removed once the stage finished

    manifest = pd.read_csv(R / "pool/prior/manifest.csv")
    assert list(manifest["member"]) == ["epoch1", "epoch2"]
    assert manifest["test_accuracy"].between(0, 1).all() and (manifest["flops"] > 0).all()

    for method in ("teddy", "random"):
        for ipc in (1, 2):
            images, labels, meta = load_set_tensors(R / f"distilled/{method}/ipc{ipc}/meta.json")
            assert images.shape == (10 * ipc, 1, 28, 28)
            assert sorted(labels.tolist()) == sorted(list(range(10)) * ipc)
            assert len(meta["mean"]) == 1 and len(meta["class_names"]) == 10
            assert meta["config"]["recipe"]["method"] == method
            # the set reads as an ordinary ImageFolder, classes in index order
            folder = ImageFolder(str(R / f"distilled/{method}/ipc{ipc}/images"))
            assert len(folder) == 10 * ipc and folder.classes == meta["class_folders"]
            assert (R / f"distilled/{method}/ipc{ipc}/grid.png").read_bytes()[:4] == b"\x89PNG"
            assert meta["shards"] == (2 if (method, ipc) == ("teddy", 2) else 1)

    result = json.loads((R / "eval/teddy/ipc2/convnet/teddy_small_kd/seed1.json").read_text())
    cell = eval_cell("teddy", 2, "convnet", "teddy_small_kd", 1)  # its log and benchmark share the cell
    assert (R / f"logs/evaluate/{cell}.log").is_file() and (R / f"benchmarks/evaluate/{cell}.tsv").is_file()
    assert result["labels"] == "online_kd" and result["protocol"] == "teddy_small_kd"
    assert 0 <= result["test_accuracy"] <= 1
    table = pd.read_csv(R / "tables/accuracy.csv")
    measured = table[table["kind"] == "measured"]
    assert len(measured) == 2 * 2 * 2  # method x ipc x arch (one protocol)
    assert (measured["seeds"] == 2).all() and measured["mean"].between(0, 100).all()
    ceiling = table[table["kind"] == "ceiling"]
    assert len(ceiling) == 2 * 2 and set(ceiling["student"]) == {"convnet", "resnet10_w16"}
    for arch in ("convnet", "resnet10_w16"):
        assert json.loads((R / f"ceiling/{arch}/teddy_small_kd/seed0.json").read_text())["train_images"] == 180
    md = (R / "tables/accuracy.md").read_text()
    assert "## convnet, protocol teddy_small_kd" in md and "teddy" in md and "random" in md and "ceiling" in md
    assert "Teacher (base model):" in md and "epoch1" in md  # what the rows were taught by
    assert "Published under protocols we did not run" in md and "closest protocol we run: teddy_small_kd" in md
    assert (R / "tables/accuracy.tex").read_text().count(r"\multicolumn") == 2
    efficiency = pd.read_csv(R / "tables/efficiency.csv")
    assert {"train_base", "pool_member", "distill", "gather", "evaluate", "ceiling"} <= set(efficiency["stage"])
    assert (R / "plots/accuracy_vs_ipc_teddy_small_kd.png").read_bytes()[:4] == b"\x89PNG"

    # Snakemake's own HTML report holds the table page and the plot (embedded as data URIs)
    report = work / "report.html"
    proc = snakemake(work, "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = report.read_text()
    for embedded in ("tables/accuracy.html", "plots/accuracy_vs_ipc_teddy_small_kd.png"):
        encoded = base64.b64encode((R / embedded).read_bytes()).decode()
        assert encoded[:2000] in page, embedded
    # nothing half-written is left behind
    assert not list(R.rglob("*.tmp"))

    # a second run has nothing to do
    again = snakemake(work, "--cores", "2", "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_outputs_honour_umask_022(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=100, n_test=20)
    cfg = tiny_config(data)
    cfg["distill"]["ipc"] = [1]
    # random only: every kind of output (base, set, shard, student, table) without the pool's jobs,
    # whose modes the umask-002 run above checks
    cfg["distill"]["methods"] = {"random": cfg["distill"]["methods"]["random"]}
    cfg["evaluate"]["students"], cfg["evaluate"]["seeds"] = ["convnet"], [0]
    set_protocol(cfg, epochs=1)
    work = write_workdir(tmp_path / "work", cfg)
    proc = snakemake(work, "--cores", "2", umask=0o022)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    R = work / "results" / "tiny"
    assert (R / "tables/accuracy.md").stat().st_mode & 0o777 == 0o644
    assert_modes_follow_umask(R, 0o022)


def test_bad_config_key_is_one_clear_line(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=30, n_test=10)
    cfg = tiny_config(data)
    cfg["evaluate"]["students"] = ["convnet", "vgg99"]
    proc = snakemake(write_workdir(tmp_path / "w1", cfg), "-n")
    assert proc.returncode != 0 and "unknown architecture 'vgg99'" in proc.stdout + proc.stderr

    cfg = tiny_config(data)
    cfg["distill"]["ipc"] = [0]
    proc = snakemake(write_workdir(tmp_path / "w2", cfg), "-n")
    assert proc.returncode != 0 and "ipc" in (proc.stdout + proc.stderr).lower()

    cfg = tiny_config(data)
    cfg["distill"]["methods"]["teddy"]["method"] = "magic"
    proc = snakemake(write_workdir(tmp_path / "w3", cfg), "-n")
    assert proc.returncode != 0 and "unknown distillation method 'magic'" in proc.stdout + proc.stderr

    cfg = tiny_config(data)
    cfg["dataset"]["colour"] = True
    proc = snakemake(write_workdir(tmp_path / "w4", cfg), "-n")
    assert proc.returncode != 0 and "colour" in proc.stdout + proc.stderr


def test_missing_dataset_fails_the_job_with_one_line(tmp_path):
    cfg = tiny_config(tmp_path / "no-such-dataset")
    proc = snakemake(write_workdir(tmp_path / "w", cfg), "--cores", "1", "--until", "train_base")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "error in rule train_base: dataset file missing" in out and "dataset.root" in out


def test_protocols_are_a_wildcard_and_stored_teacher_outputs_add_relabel(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=30, n_test=10)
    cfg = tiny_config(data)
    cfg["evaluate"].update(protocols=["teddy_small_kd", "teddy_small_hard", "dc"], teacher_outputs="stored")
    proc = snakemake(write_workdir(tmp_path / "w", cfg), "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for protocol in ("teddy_small_kd", "teddy_small_hard", "dc"):
        assert f"eval/teddy/ipc1/convnet/{protocol}/seed0.json" in out
    assert "eval/teddy/ipc1/resnet10_w16/dc/" not in out  # dc evaluates its ConvNet only
    # rule relabel, for the kd protocol only
    assert "distilled/teddy/ipc1/soft_labels/teddy_small_kd/seed0/meta.json" in out
    assert "soft_labels/teddy_small_hard" not in out and "soft_labels/dc" not in out
    cfg["evaluate"]["keep_topk"] = 11
    proc = snakemake(write_workdir(tmp_path / "w2", cfg), "-n")
    assert proc.returncode != 0 and "evaluate.keep_topk=11 exceeds" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1])
def test_whole_dag_on_a_generated_image_folder(tmp_path, channels):
    """Your own data: 7 classes of 20x20 images (an odd size), greyscale, mean/std computed by rule
    normalisation, one seed, one student, one IPC. The RGB case is the README's own-data command,
    run end to end by tests/test_readme.py."""
    classes = [f"class_{k}" for k in range(7)]
    data = write_class_folders(tmp_path / "data", classes, per_class=6, size=20, channels=channels)
    cfg = tiny_config(data)
    cfg["dataset"] = {"name": "image_folder", "root": str(data), "image_size": 20, "channels": channels,
                      "val_fraction": 0.1}
    cfg["results_dir"] = "results/mine"
    cfg["base"]["recipe"]["batch_size"] = 16
    cfg["evaluate"]["seeds"] = [0]
    if channels == 1:
        cfg["distill"]["ipc"] = [1]
        cfg["evaluate"].update(students=["convnet"], seeds=[0])
    work = write_workdir(tmp_path / "work", cfg)
    proc = snakemake(work, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    R = work / "results" / "mine"

    stats = json.loads((R / "data/normalisation.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == channels and stats["classes"] == classes
    assert stats["train_counts"] == {c: 6 for c in classes}
    images, labels, meta = load_set_tensors(R / "distilled/teddy/ipc1/meta.json")
    assert images.shape == (7, channels, 20, 20) and meta["mean"] == pytest.approx(stats["mean"])
    assert meta["class_names"] == classes and sorted(labels.tolist()) == list(range(7))
    table = pd.read_csv(R / "tables/accuracy.csv")
    table = table[table["kind"] == "measured"]  # published rows of the same dataset name may sit beside ours
    ipcs, students = cfg["distill"]["ipc"], cfg["evaluate"]["students"]
    assert len(table) == 2 * len(ipcs) * len(students) and table["mean"].between(0, 100).all()
    assert (table["seeds"] == 1).all()
    assert not list(R.rglob("*.tmp"))


def test_bad_image_folder_configs_stop_at_load(tmp_path):
    data = write_class_folders(tmp_path / "data", ["a", "b"], per_class=2, size=20)
    cfg = tiny_config(data)
    cfg["dataset"] = {"name": "image_folder", "root": str(data), "image_size": 20, "channels": 3}
    proc = snakemake(write_workdir(tmp_path / "w1", cfg), "-n")  # IPC 2 fits, IPC 5 does not
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cfg["distill"]["ipc"] = [1, 5]
    proc = snakemake(write_workdir(tmp_path / "w2", cfg), "-n")
    assert proc.returncode != 0 and "class 'a' has 2 training images, fewer than the IPC 5" in proc.stdout + proc.stderr

    cfg = tiny_config(data)
    cfg["dataset"] = {"name": "image_folder", "root": str(data), "image_size": 20, "channels": 3,
                      "classes": ["a", "n01440764"]}
    proc = snakemake(write_workdir(tmp_path / "w3", cfg), "-n")
    assert proc.returncode != 0 and "['n01440764'] missing from" in proc.stdout + proc.stderr

    cfg = tiny_config(data)
    cfg["dataset"] = {"name": "image_folder", "root": str(data), "image_size": 6, "channels": 3}
    proc = snakemake(write_workdir(tmp_path / "w4", cfg), "-n")
    assert proc.returncode != 0 and "needs images of at least" in proc.stdout + proc.stderr
