"""A method, or an evaluation protocol, added without editing the package: a toy method in a file
of its own (the config's `plugins`) and a protocol YAML in the config's `protocols_dir` run
through the demo DAG's dry-run, and the toy method through one distill job."""

import json
import shutil
import sys

import pytest
import yaml
from fixtures import REPO, job_counts, snakemake, tiny_config

from teddy.errors import TeddyError
from teddy.job_files import Files
from teddy.methods import METHODS
from teddy.plugins import load_plugins
from teddy.stages import run_stage

TOY_METHOD = '''
"""A toy method: pixels pulled towards a constant, one loss term, no pool."""
from teddy.methods import register_method
from teddy.methods.base import HARNESS_DEFAULTS, HARNESS_KEYS, run_batches


@register_method("toy", per_batch=True, defaults={**HARNESS_DEFAULTS, "target": 0.5},
                 recipe_keys={**HARNESS_KEYS, "target": {"type": "number"}})
def distill(task):
    target = float(task.recipe["target"])

    def loss(model, x, y, iteration):
        value = ((x - target) ** 2).mean()
        return value, {"toy": float(value.detach())}
    return run_batches(task, loss, desc="toy")
'''


@pytest.fixture
def toy_plugin(tmp_path):
    path = tmp_path / "toy_method.py"
    path.write_text(TOY_METHOD)
    yield path
    if "toy" in METHODS:  # this process registered it: leave the registry as it was
        METHODS.unregister("toy")
    for name in [n for n in sys.modules if n.startswith("teddy_plugin_toy_method")]:
        del sys.modules[name]


def toy_protocol_dir(tmp_path):
    """The repository's protocols plus one of our own, a copy of teddy_small_hard at one epoch."""
    folder = tmp_path / "protocols"
    shutil.copytree(REPO / "config" / "protocols", folder)
    protocol = yaml.safe_load((folder / "teddy_small_hard.yaml").read_text())
    protocol["name"] = "toy_protocol"
    protocol["recipe"]["epochs"] = 1
    (folder / "toy_protocol.yaml").write_text(yaml.safe_dump(protocol))
    return folder


def test_a_toy_method_and_a_protocol_file_run_through_the_demo_dry_run(tmp_path, toy_plugin):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["plugins"] = [str(toy_plugin)]
    cfg["protocols_dir"] = str(toy_protocol_dir(tmp_path))
    cfg["evaluate"]["protocols"] = ["toy_protocol"]
    cfg["distill"]["methods"] = {"toy": {"method": "toy", "iterations": 1, "target": 0.25}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--configfile", str(path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    counts = job_counts(proc.stdout)
    ipcs, seeds = len(cfg["distill"]["ipc"]), len(cfg["evaluate"]["seeds"])
    assert counts["distill"] == ipcs and counts["evaluate"] == ipcs * seeds * len(cfg["evaluate"]["students"])
    assert "toy_protocol" in proc.stdout and "method=toy" in proc.stdout.replace(" ", "")


def test_a_toy_method_runs_one_iteration_in_a_distill_job(tmp_path, fmnist_root, toy_plugin):
    cfg = tiny_config(fmnist_root)
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["plugins"] = [str(toy_plugin)]
    cfg["distill"]["methods"] = {"toy": {"method": "toy", "iterations": 1, "target": 0.25, "batch_size": 10}}
    done = tmp_path / "results/distilled/toy/ipc1/shards/0/done.json"
    run_stage("distill", cfg, {"method": "toy", "ipc": 1, "shard": 0}, Files(pool=[]), Files(done=done))
    record = json.loads(done.read_text())
    assert METHODS["toy"].recipe_keys["target"] == {"type": "number"}
    assert record and done.is_file()


def test_a_plugin_key_the_method_does_not_read_is_refused(tmp_path, toy_plugin):
    from teddy.config import load_config

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["plugins"] = [str(toy_plugin)]
    cfg["distill"]["methods"] = {"toy": {"method": "toy", "unroll_steps": 3}}
    with pytest.raises(TeddyError, match=r"distill.methods.toy.*unroll_steps.*method toy reads"):
        load_config(cfg)
    with pytest.raises(TeddyError, match="plugins names .*missing.py, which is not a file"):
        load_plugins([str(tmp_path / "missing.py")])
