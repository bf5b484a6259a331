"""Checkpoint and resume: a stage killed with SIGKILL and started again ends, on CPU, with
exactly the numbers of an uninterrupted run; a truncated checkpoint falls back to the previous
one or to a clean start, saying so; Snakemake's lock keeps a second run off a results
directory, and `--rerun-incomplete` after a kill lands on the job's checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures import REPO, SNAKEMAKE, tiny_config, write_fashion_mnist, write_workdir

from teddy.datasets import dataset_info, load_split
from teddy.distilled_set import index_within_class, load_set_tensors, write_images, write_meta
from teddy.io import load_torch
from teddy.methods.base import DistillTask, optimise_synthetic, select_real
from teddy.methods.teddy import statistics_loss_fn
from teddy.models import build_model
from teddy.pool import WeakPool, save_model
from teddy.train import fit, recalibrate_bn

CPU = torch.device("cpu")
INFO = dataset_info("fashion_mnist")

# Runs one stage in a fresh interpreter, as a Snakemake job would: argv[1] is a JSON file of
# arguments. One thread, so that the numbers are reproducible to the bit.
DISTILL_JOB = """
import json, sys, torch
torch.set_num_threads(1)
from teddy.stages import run_stage
from teddy.job_files import Files
a = json.load(open(sys.argv[1]))
run_stage("distill", a["cfg"], {"method": "teddy", "ipc": 2, "shard": 0}, Files(pool=a["members"]),
          Files(done=a["out"] + "/done.json"))
"""
STUDENT_JOB = """
import json, sys, torch
torch.set_num_threads(1)
from teddy.data import TensorImageDataset
from teddy.distilled_set import load_set_tensors
from teddy.io import save_torch
from teddy.models import build_model
from teddy.pool import load_model
from teddy.resume import remove_checkpoint
from teddy.train import fit, targets_for
a = json.load(open(sys.argv[1]))
images, labels, meta = load_set_tensors(a["distilled"])
teacher, _ = load_model(a["teacher"])
torch.manual_seed(1)
student = build_model("convnet", num_classes=10, in_channels=1, image_size=28, depth=2, width=8)
history = fit(student, TensorImageDataset(images, labels, meta["class_names"]), a["recipe"],
              torch.device("cpu"), seed=1, targets=targets_for(teacher), checkpoint_path=a["out"] + "/student.ckpt")
save_torch({"model": student.state_dict(), "history": history}, a["out"] + "/student.pt")
remove_checkpoint(a["out"] + "/student.ckpt")
"""


def small_convnet(seed: int):
    torch.manual_seed(seed)
    return build_model("convnet", num_classes=10, in_channels=1, image_size=28, depth=2, width=8)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """Tiny Fashion-MNIST, two BN-recalibrated pool members (one doubles as teacher) and a
    distilled set for the student."""
    root = tmp_path_factory.mktemp("resume")
    data = write_fashion_mnist(root / "data", n_train=100, n_test=20)
    section = {"name": "fashion_mnist", "root": str(data), "val_fraction": 0.0}
    real = load_split(section, "train")
    for i in range(2):
        model = small_convnet(i)
        recalibrate_bn(model, real, CPU, batches_to_use=2, batch_size=50)
        save_model(root / f"member{i}.pt", model, {"member": i})
    labels = torch.arange(20) % 10  # two images per class
    write_images(root / "distilled" / "images", real.images[:20], labels, index_within_class(labels),
                 INFO.mean, INFO.std)
    write_meta(root / "distilled", method="fixture", ipc=2, class_names=real.class_names, mean=INFO.mean,
               std=INFO.std, channels=1, image_size=28, config={})
    return root, section


def start(code: str, args: dict, workdir: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "args.json").write_text(json.dumps(args))
    return subprocess.Popen([sys.executable, "-c", code, str(workdir / "args.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_once_checkpointed(proc: subprocess.Popen, checkpoint: Path) -> None:
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert proc.poll() is None, "the job ended before writing a checkpoint: " + proc.stdout.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_killed_distillation_resumes_to_identical_images(fixture_dir, tmp_path):
    """A shard of two batches killed during its second batch: the first is not redone, the second
    resumes from its checkpoint, and the images are those of an uninterrupted run."""
    root, section = fixture_dir
    cfg = {"dataset": section, "device": "cpu", "base": {"arch": "convnet"}, "pools": {"prior": {"generator": "prior"}},
           "distill": {"seed": 0, "methods": {"teddy": {
               "method": "teddy", "pool": "prior", "init": "real", "iterations": 300, "batch_size": 10, "lr": 0.05,
               "alpha": 1.0, "checkpoint_every": 20, "log_every": 50,
               "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2}}}}}
    args = {"cfg": cfg, "members": [str(root / "member0.pt"), str(root / "member1.pt")]}

    finish(start(DISTILL_JOB, {**args, "out": str(tmp_path / "whole")}, tmp_path / "whole"))
    cut = tmp_path / "cut"
    proc = start(DISTILL_JOB, {**args, "out": str(cut)}, cut)
    # wait until batch 1 is written and batch 2 has a checkpoint (newer than batch 1's marker: batch
    # 1's own checkpoint is removed just after its marker is written), then kill
    deadline = time.monotonic() + 120

    def second_batch_checkpointed() -> bool:
        try:
            return (cut / "distill.ckpt").stat().st_mtime_ns > (cut / "batches" / "0.json").stat().st_mtime_ns
        except FileNotFoundError:
            return False

    while not second_batch_checkpointed():
        assert proc.poll() is None, "the shard ended before its second batch checkpointed: " + proc.stdout.read()[-2000:]
        assert time.monotonic() < deadline, "no second-batch checkpoint after 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (cut / "done.json").exists()
    out = finish(start(DISTILL_JOB, {**args, "out": str(cut)}, cut))
    assert "batches [0] already written" in out and "resuming teddy-statistics ipc2 batch 2/2 from" in out
    assert "batch 1/2" not in out  # the finished batch is not optimised again

    whole, resumed = (json.loads((d / "done.json").read_text()) for d in (tmp_path / "whole", cut))
    assert whole["files"] == resumed["files"] and len(whole["files"]) == 20
    for rel in whole["files"]:
        assert (tmp_path / "whole" / "images" / rel).read_bytes() == (cut / "images" / rel).read_bytes()
    assert [b["history"] for b in whole["batch_logs"]] == [b["history"] for b in resumed["batch_logs"]]
    assert not (cut / "distill.ckpt").exists() and not (cut / "distill.ckpt.prev").exists()


def test_killed_student_training_resumes_to_identical_weights(fixture_dir, tmp_path):
    root, _ = fixture_dir
    recipe = {"epochs": 600, "batch_size": 20, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01,
              "temperature": 4.0, "checkpoint_every": 10, "augment": {"crop": False, "flip": True, "max_shift": 2}}
    args = {"distilled": str(root / "distilled" / "meta.json"), "teacher": str(root / "member0.pt"), "recipe": recipe}

    finish(start(STUDENT_JOB, {**args, "out": str(tmp_path / "whole")}, tmp_path / "whole"))
    cut = tmp_path / "cut"
    kill_once_checkpointed(start(STUDENT_JOB, {**args, "out": str(cut)}, cut), cut / "student.ckpt")
    assert not (cut / "student.pt").exists()
    out = finish(start(STUDENT_JOB, {**args, "out": str(cut)}, cut))
    assert "resuming train from" in out

    whole, resumed = load_torch(tmp_path / "whole" / "student.pt"), load_torch(cut / "student.pt")
    assert whole["history"] == resumed["history"] and len(whole["history"]) == 600
    assert whole["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])


# --- damaged and stale checkpoints (in-process: a crash is an exception at a chosen step) ----

class Crash(Exception):
    pass


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_truncated_training_checkpoint_falls_back_then_starts_clean(fixture_dir, tmp_path, capsys):
    _, section = fixture_dir
    real = load_split(section, "train")
    recipe = {"epochs": 6, "batch_size": 50, "lr": 0.05, "checkpoint_every": 1}
    ckpt = tmp_path / "train.ckpt"

    def run(recipe=recipe, checkpoint=ckpt, crash_at=None):
        def on_epoch_end(epoch, model, metrics):
            if epoch == crash_at:
                raise Crash
        model = small_convnet(0)
        fit(model, real, recipe, CPU, seed=3, on_epoch_end=on_epoch_end, checkpoint_path=checkpoint)
        return list(model.state_dict().values())

    reference = run(checkpoint=None)
    with pytest.raises(Crash):
        run(crash_at=4)  # checkpoints after epochs 1-3: train.ckpt (3) and train.ckpt.prev (2)
    truncate(ckpt)
    capsys.readouterr()
    assert same(run(), reference)
    err = capsys.readouterr().err
    assert "corrupt or truncated training checkpoint" in err and "falling back to the previous checkpoint" in err
    assert "at epoch 2/6" in err

    truncate(ckpt)  # the finished run left train.ckpt (5) and .prev (4): damage both
    truncate(Path(str(ckpt) + ".prev"))
    assert same(run(), reference)
    assert "starting clean" in capsys.readouterr().err

    # a checkpoint of another recipe (the config changed since) is not resumed from
    other = {**recipe, "lr": 0.02}
    result = run(other)
    assert "written under other settings" in capsys.readouterr().err
    assert same(result, run(other, checkpoint=None)) and not same(result, reference)


def test_truncated_distillation_checkpoint_falls_back_then_starts_clean(fixture_dir, tmp_path, capsys):
    root, section = fixture_dir
    real = load_split(section, "train")
    pool = WeakPool([load_torch(root / f"member{i}.pt")["model"] for i in range(2)], ["m0", "m1"])
    recipe = {"iterations": 40, "batch_size": 10, "lr": 0.05, "checkpoint_every": 5,
              "augment": {"crop": True, "crop_scale": [0.5, 1.0], "flip": True, "max_shift": 2}}
    ckpt = tmp_path / "distill.ckpt"

    def run(checkpoint=ckpt, crash_at=None):
        task = DistillTask(real=real, info=INFO, pool=pool, ipc=1, recipe=recipe, seed=0, device=CPU,
                           checkpoint_path=checkpoint)
        loss = statistics_loss_fn(recipe)

        def loss_fn(model, x, y, it):
            if it == crash_at:
                raise Crash
            return loss(model, x, y, it)
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        images, labels = select_real(task, generator)
        result = optimise_synthetic(task, images, labels, loss_fn, generator, desc="t")
        return [result.images, result.labels]

    reference = run(checkpoint=None)
    with pytest.raises(Crash):
        run(crash_at=22)  # checkpoints after iterations 5-20: distill.ckpt (20) and .prev (15)
    truncate(ckpt)
    capsys.readouterr()
    assert same(run(), reference)
    err = capsys.readouterr().err
    assert "corrupt or truncated distillation checkpoint" in err and "falling back" in err
    assert "at iteration 15/40" in err

    truncate(ckpt)
    truncate(Path(str(ckpt) + ".prev"))
    assert same(run(), reference)
    assert "starting clean" in capsys.readouterr().err


# --- the workflow: Snakemake's lock, and --rerun-incomplete after a kill ----------------------

def locked(work: Path) -> bool:
    locks = work / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"run ended before {what}: " + proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_is_locked_out_and_rerun_incomplete_resumes(tmp_path):
    cfg = tiny_config(write_fashion_mnist(tmp_path / "data", n_train=200, n_test=60))
    cfg["pools"]["prior"]["epochs"] = [1]
    cfg["distill"]["methods"]["teddy"].update(iterations=600, checkpoint_every=20)
    work = write_workdir(tmp_path / "work", cfg)
    sm = SNAKEMAKE + ["--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(work), "--cores", "1"]
    R = work / "results" / "tiny"

    def background(target):
        return subprocess.Popen(sm + [target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def run(*args):
        return subprocess.run(sm + list(args), capture_output=True, text=True, timeout=300)

    # 1. a second run on the same results directory is refused while the first runs; the first ends well
    first = background("results/tiny/distilled/teddy/ipc1/meta.json")
    wait_for(lambda: locked(work), first, "Snakemake lock")
    second = run("results/tiny/distilled/teddy/ipc1/meta.json")
    assert second.returncode != 0 and "cannot be locked" in second.stdout + second.stderr
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    assert load_set_tensors(R / "distilled/teddy/ipc1/meta.json")[0].shape == (10, 1, 28, 28)
    assert not list(R.rglob("*.tmp")) and not list(R.rglob("*.ckpt*"))

    # 2. kill the whole run (as a lost node or an expired allocation would) during a distillation
    ckpt = R / "distilled/teddy/ipc2/shards/0/distill.ckpt"
    killed = background("results/tiny/distilled/teddy/ipc2/meta.json")
    wait_for(ckpt.exists, killed, "distillation checkpoint")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert not (R / "distilled/teddy/ipc2/meta.json").exists()
    stale = run("results/tiny/distilled/teddy/ipc2/meta.json")  # the killed run's lock is still there
    assert stale.returncode != 0 and "cannot be locked" in stale.stdout + stale.stderr
    assert run("--unlock").returncode == 0
    again = run("--rerun-incomplete", "results/tiny/distilled/teddy/ipc2/meta.json")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (R / "logs/distill/teddy/ipc2/shard0.log").read_text()
    assert "resuming teddy-statistics ipc2 batch 1/1 from" in log, log[-2000:]
    assert (R / "distilled/teddy/ipc2/meta.json").exists() and not ckpt.exists()
