"""Every rule's stage run outside Snakemake with only its settings, its files and the Machine
(teddy.stages): `run` never sees the config, and poisoning every config key outside a stage's
settings changes neither its settings nor what it writes."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from fixtures import set_protocol, tiny_config, write_class_folders, write_fashion_mnist

from teddy.config import load_config
from teddy.errors import TeddyError
from teddy.job_files import Files
from teddy.machine import machine_from_config
from teddy.stages import STAGES, stage

WILDCARDS = {"method": "teddy", "ipc": 2, "shard": 0, "arch": "convnet", "protocol": "teddy_small_kd", "seed": 0,
             "pool": "prior", "member": "epoch1"}


def small_config(data: Path, results: Path) -> dict:
    cfg = tiny_config(data)
    cfg["results_dir"] = str(results)
    cfg["base"]["recipe"]["epochs"] = 2
    cfg["distill"]["methods"]["teddy"].update(iterations=3, batch_size=20)
    cfg["evaluate"]["protocols"] = ["teddy_small_kd", "teddy_small_hard"]
    for name in cfg["evaluate"]["protocols"]:
        set_protocol(cfg, name, epochs=2)
    return load_config(cfg)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The stages of the demo's DAG run in order on a tiny Fashion-MNIST, by run() alone."""
    tmp = tmp_path_factory.mktemp("stages")
    data = write_fashion_mnist(tmp / "data", n_train=120, n_test=20)
    R = tmp / "results"
    cfg = small_config(data, R)
    stored = copy.deepcopy(cfg)
    stored["evaluate"]["teacher_outputs"] = "stored"
    machine = machine_from_config(cfg)

    def go(name, inputs, outputs, config=cfg, **wildcards):
        mod = stage(name)
        settings = mod.settings(config, wildcards)
        json.dumps(settings)  # plain data: a Snakemake param, recorded
        return mod.run(settings, inputs, outputs, machine)

    base = R / "base/convnet"
    go("train_base", Files(), Files(model=base / "model.pt", metrics=base / "metrics.json"), arch="convnet")
    members = [R / f"pool/prior/members/epoch{e}.pt" for e in (1, 2)]
    for e, path in zip((1, 2), members):
        go("pool_member", Files(model=base / "model.pt", metrics=base / "metrics.json"), Files(path),
           pool="prior", member=f"epoch{e}")
    go("pool_manifest", Files(*members), Files(R / "pool/prior/manifest.csv"), pool="prior")
    sets = {}
    for method, pool in (("teddy", members), ("random", [])):
        set_dir = R / f"distilled/{method}/ipc2"
        done = set_dir / "shards/0/done.json"
        go("distill", Files(pool=pool), Files(done=done), method=method, ipc=2, shard=0)
        go("gather", Files(shards=[done]), Files(images=set_dir / "images", meta=set_dir / "meta.json",
                                                 grid=set_dir / "grid.png", log_json=set_dir / "log.json"),
           method=method, ipc=2)
        sets[method] = set_dir
    evals = []
    for method, set_dir in sets.items():
        store = set_dir / "soft_labels/teddy_small_kd/seed0/meta.json"
        go("relabel", Files(distilled=set_dir / "meta.json", teacher=base / "model.pt"), Files(store),
           method=method, ipc=2, protocol="teddy_small_kd", seed=0)
        # the kd protocol with online and with stored teacher outputs (one config each), and the hard one
        for protocol, config, teacher, labels in (("teddy_small_kd", cfg, [base / "model.pt"], []),
                                                  ("teddy_small_kd", stored, [], [store]),
                                                  ("teddy_small_hard", cfg, [], [])):
            out = R / f"eval/{method}/ipc2/convnet/{protocol}/seed0{'_stored' if labels else ''}.json"
            go("evaluate", Files(distilled=set_dir / "meta.json", teacher=teacher, soft_labels=labels), Files(out),
               config=config, method=method, ipc=2, arch="convnet", protocol=protocol, seed=0)
            evals.append(out)
    ceilings = []
    for protocol in ("teddy_small_hard", "teddy_small_kd"):
        out = R / f"ceiling/convnet/{protocol}/seed0.json"
        go("ceiling", Files(teacher=[base / "model.pt"] if protocol == "teddy_small_kd" else []), Files(out),
           arch="convnet", protocol=protocol, seed=0)
        ceilings.append(out)
    return {"cfg": cfg, "machine": machine, "R": R, "data": data, "evals": evals, "ceilings": ceilings,
            "members": members}


def test_every_stage_runs_from_its_settings_alone(pipeline, tmp_path):
    R = pipeline["R"]
    assert json.loads((R / "base/convnet/metrics.json").read_text())["test_accuracy"] >= 0
    assert (R / "pool/prior/manifest.csv").is_file()
    for method in ("teddy", "random"):
        assert json.loads((R / f"distilled/{method}/ipc2/meta.json").read_text())["ipc"] == 2
    for out in pipeline["evals"] + pipeline["ceilings"]:
        assert 0 <= json.loads(Path(out).read_text())["test_accuracy"] <= 1
    # aggregate: its own small config (one student, one seed, what the pipeline above made)
    cfg = copy.deepcopy(pipeline["cfg"])
    cfg["evaluate"].update(students=["convnet"], seeds=[0])
    cfg["distill"]["ipc"] = [2]
    cfg["ceiling"]["seeds"] = [0]
    mod = stage("aggregate")
    protocols = cfg["evaluate"]["protocols"]
    out = Files(csv=tmp_path / "a.csv", md=tmp_path / "a.md", tex=tmp_path / "a.tex", html=tmp_path / "a.html",
                efficiency=tmp_path / "e.csv", plots=[tmp_path / f"{p}.png" for p in protocols])
    evals = [e for e in pipeline["evals"] if not e.name.endswith("_stored.json")]
    table = mod.run(mod.settings(cfg, {}), Files(evals=evals, ceilings=pipeline["ceilings"]), out,
                    pipeline["machine"])
    assert set(table["method"]) >= {"teddy", "random"} and (tmp_path / "a.md").is_file()


def test_an_ensemble_protocol_runs_through_its_stages(pipeline, tmp_path):
    """A kd protocol taught by an ensemble (G-VBSM's form: rescaled mean, MSE + CE, here with EMA):
    train_base makes the second architecture, relabel and evaluate take both model files, and the
    stored and online students agree exactly."""
    cfg, machine, R = copy.deepcopy(pipeline["cfg"]), pipeline["machine"], pipeline["R"]
    folder = Path(cfg["protocols_dir"])
    protocol = yaml.safe_load((folder / "teddy_small_kd.yaml").read_text())
    protocol.update(name="ensemble_kd", teachers={"archs": ["convnet", "resnet10_w16"], "combine": "rescaled_mean"})
    protocol["recipe"].update(epochs=2, kd_loss="mse_ce", hard_label_weight=0.1, ema_decay=0.9)
    (folder / "ensemble_kd.yaml").write_text(yaml.safe_dump(protocol))
    stored = copy.deepcopy(cfg)
    stored["evaluate"]["teacher_outputs"] = "stored"

    def go(name, inputs, outputs, config=cfg, **wildcards):
        mod = stage(name)
        settings = mod.settings(config, wildcards)
        json.dumps(settings)
        return settings, mod.run(settings, inputs, outputs, machine)

    other = tmp_path / "base/resnet10_w16"
    settings, metrics = go("train_base", Files(), Files(model=other / "model.pt", metrics=other / "metrics.json"),
                           arch="resnet10_w16")
    assert settings["base"]["arch"] == metrics["arch"] == "resnet10_w16"
    assert metrics["snapshots"] == {} and not list(other.glob("snapshots/*.pt"))  # no pool reads a teacher's
    teachers = [R / "base/convnet/model.pt", other / "model.pt"]
    set_dir = R / "distilled/teddy/ipc2"
    wc = dict(method="teddy", ipc=2, protocol="ensemble_kd", seed=0)
    store = tmp_path / "soft_labels/meta.json"
    go("relabel", Files(distilled=set_dir / "meta.json", teacher=teachers), Files(store), **wc)
    results = {}
    for config, inputs in ((cfg, Files(distilled=set_dir / "meta.json", teacher=teachers)),
                           (stored, Files(distilled=set_dir / "meta.json", soft_labels=[store]))):
        out = tmp_path / f"eval_{config['evaluate']['teacher_outputs']}.json"
        settings, _ = go("evaluate", inputs, Files(out), config=config, arch="convnet", **wc)
        assert settings["teachers"]["archs"] == ["convnet", "resnet10_w16"]
        results[config["evaluate"]["teacher_outputs"]] = json.loads(out.read_text())
    assert results["online"]["test_accuracy"] == results["stored"]["test_accuracy"]
    with pytest.raises(TeddyError, match="teacher"):  # one model file for a two-teacher ensemble
        go("evaluate", Files(distilled=set_dir / "meta.json", teacher=teachers[:1]), Files(tmp_path / "x.json"),
           arch="convnet", **wc)
    _, ceiling = go("ceiling", Files(teacher=teachers), Files(tmp_path / "ceiling.json"), arch="convnet",
                    protocol="ensemble_kd", seed=0)
    assert ceiling["labels"] == "online_kd" and 0 <= ceiling["test_accuracy"] <= 1


def test_train_prior_and_normalisation_run_from_their_settings(tmp_path):
    data = write_class_folders(tmp_path / "folders", ["a", "b"], per_class=6, size=12)
    cfg = tiny_config(data)
    cfg["dataset"] = {"name": "image_folder", "root": str(data), "image_size": 12, "channels": 3}
    cfg["results_dir"] = str(tmp_path / "R")
    cfg["arch_options"] = {"convnet": {"depth": 1, "width": 4}}
    cfg["distill"]["ipc"] = [1]
    cfg["pools"]["prior"] = {"generator": "prior", "epochs": [1], "recipe": {**cfg["base"]["recipe"], "epochs": 1}}
    cfg = load_config(cfg)
    machine = machine_from_config(cfg)
    norm = stage("normalisation")
    norm.run(norm.settings(cfg, {}), Files(), Files(machine.normalisation_file), machine)
    assert "mean" in json.loads(Path(machine.normalisation_file).read_text())
    prior = stage("train_prior")
    out = Files(metrics=tmp_path / "R/pool/prior/run/metrics.json")
    metrics = prior.run(prior.settings(cfg, {"pool": "prior"}), Files(), out, machine)
    assert list(metrics["snapshots"]) == ["1"] and (tmp_path / "R/pool/prior/run/snapshots/epoch1.pt").is_file()


class Poison:
    """A config value no stage may read: any use but identity fails."""

    def __repr__(self):
        return "POISON"


def leaves(tree, path=()):
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from leaves(v, (*path, k))
    else:
        yield path


def set_path(cfg, path, value):
    for k in path[:-1]:
        cfg = cfg[k]
    cfg[path[-1]] = value


def settings_or_error(mod, cfg, wildcards):
    try:
        return mod.settings(cfg, wildcards)
    except Exception as exc:  # noqa: BLE001 - a read of a poisoned key
        return exc


def poisoned(cfg: dict, mod, wildcards) -> tuple[dict, int]:
    """cfg with every leaf outside the stage's settings poisoned (a leaf is outside when poisoning
    it alone leaves the settings as they were); returns (config, how many were poisoned)."""
    clean = mod.settings(cfg, wildcards)
    out, count = copy.deepcopy(cfg), 0
    for path in leaves(cfg):
        trial = copy.deepcopy(cfg)
        set_path(trial, path, Poison())
        if settings_or_error(mod, trial, wildcards) == clean:
            set_path(out, path, Poison())
            count += 1
    return out, count


@pytest.mark.parametrize("name", STAGES)
def test_a_poisoned_config_outside_the_settings_leaves_them_alone(pipeline, name):
    cfg = pipeline["cfg"]
    mod = stage(name)
    bad, count = poisoned(cfg, mod, WILDCARDS)
    assert count > 0
    assert mod.settings(bad, WILDCARDS) == mod.settings(cfg, WILDCARDS)


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_distill_and_evaluate_write_the_same_from_a_poisoned_config(pipeline, tmp_path):
    cfg, machine, R = pipeline["cfg"], pipeline["machine"], pipeline["R"]
    dist = stage("distill")
    wc = {"method": "teddy", "ipc": 2, "shard": 0}
    bad, _ = poisoned(cfg, dist, wc)
    assert isinstance(bad["evaluate"]["teacher_outputs"], Poison) and isinstance(bad["dataset"]["root"], Poison)
    done = tmp_path / "shard/done.json"
    dist.run(dist.settings(bad, wc), Files(pool=pipeline["members"]), Files(done=done), machine)
    before, after = _files(R / "distilled/teddy/ipc2/shards/0"), _files(done.parent)
    strip = lambda files: {k: v for k, v in files.items() if k != "done.json" and not k.startswith("batches/")}
    assert strip(after) == strip(before) and strip(after)

    ev = stage("evaluate")
    wc = {"method": "teddy", "ipc": 2, "arch": "convnet", "protocol": "teddy_small_kd", "seed": 0}
    bad, _ = poisoned(cfg, ev, wc)
    assert isinstance(bad["distill"]["methods"]["teddy"]["lr"], Poison)
    out = tmp_path / "eval.json"
    ev.run(ev.settings(bad, wc), Files(distilled=R / "distilled/teddy/ipc2/meta.json",
                                       teacher=[R / "base/convnet/model.pt"]), Files(out), machine)
    want = json.loads((R / "eval/teddy/ipc2/convnet/teddy_small_kd/seed0.json").read_text())
    got = json.loads(out.read_text())
    assert got["test_accuracy"] == want["test_accuracy"] and got["processes"] == want["processes"] == 1


def test_evaluate_settings_hold_the_process_count(pipeline):
    cfg = copy.deepcopy(pipeline["cfg"])
    ev, wc = stage("evaluate"), {**WILDCARDS}
    before = ev.settings(cfg, wc)
    cfg["evaluate"]["processes"] = 2
    assert ev.settings(cfg, wc) != before
    cfg["evaluate"]["processes"], cfg["gpus_per_job"] = None, 2
    assert ev.settings(cfg, wc) != before


def test_a_methods_eval_seeds_choose_its_students_and_leave_its_set_alone(pipeline):
    from teddy.jobs import method_eval_seeds
    from teddy.report import requested_cells

    cfg = copy.deepcopy(pipeline["cfg"])
    dist, wc = stage("distill"), {"method": "teddy", "ipc": 2, "shard": 0}
    before = dist.settings(cfg, wc)
    assert method_eval_seeds(cfg, "teddy") == [int(s) for s in cfg["evaluate"]["seeds"]]
    cfg["distill"]["methods"]["teddy"]["eval_seeds"] = [3, 7]
    assert method_eval_seeds(cfg, "teddy") == [3, 7] and dist.settings(cfg, wc) == before
    cells = requested_cells(stage("aggregate").settings(cfg, {}))  # the tables' cells
    assert set(cells.loc[cells["method"] == "teddy", "seed"]) == {3, 7}
    others = cells.loc[cells["method"] != "teddy", "seed"]
    assert set(others) == {int(s) for s in cfg["evaluate"]["seeds"]}


# ---- the config loader -------------------------------------------------------------------------

def _demo(tmp_path):
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("path, value", [
    (("distill", "methods", "teddy", "lr"), float("nan")),
    (("base", "recipe", "lr"), float("inf")),
    (("base", "recipe", "augment", "crop_scale"), [0.5, float("nan")]),
])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, path, value):
    cfg = _demo(tmp_path)
    set_path(cfg, path, value)
    with pytest.raises(TeddyError, match="config key " + ".".join(path).replace(".", r"\.")) as err:
        load_config(cfg)
    assert "\n" not in str(err.value)


def test_the_loader_fills_in_the_schema_defaults_once(tmp_path):
    cfg = load_config(_demo(tmp_path))
    assert cfg["evaluate"]["processes"] is None and cfg["evaluate"]["keep_topk"] is None
    assert cfg["evaluate"]["teacher_outputs"] == "online" and cfg["distill"]["batches_per_shard"] is None
    assert cfg["evaluate"]["num_workers"] == cfg["dataset"]["num_workers"] == 0
    assert cfg["dataset"]["normalisation_file"].endswith("data/normalisation.json")
    assert load_config(copy.deepcopy(cfg)) == cfg  # loading twice changes nothing


def test_a_schema_error_is_one_line_naming_the_key(tmp_path):
    cfg = _demo(tmp_path)
    cfg["base"]["recipe"]["epochs"] = 0
    with pytest.raises(TeddyError, match=r"config key base\.recipe\.epochs") as err:
        load_config(cfg)
    assert "\n" not in str(err.value)


def test_the_benchmarks_student_recipe_caps_the_batch_and_keeps_the_speed_keys():
    from teddy.protocols import load_protocol
    from teddy.student_run import config_student_recipe

    capped = config_student_recipe({"evaluate": {"protocols": ["teddy_small_kd"], "compile": True}}, 100)
    assert capped == {**load_protocol("teddy_small_kd")["recipe"], "batch_size": 100, "compile": True}


def test_a_model_near_chance_is_one_warning_line_naming_the_recipe_key(capsys):
    from teddy.train import near_chance_warning

    assert near_chance_warning(0.80, 10, "the base model (teacher) convnet", "base.recipe.epochs") is None
    line = near_chance_warning(0.14, 10, "pool 'prior' member epoch1", "pools.prior.epochs")
    assert line.startswith("warning: pool 'prior' member epoch1 scores 14.0%") and "pools.prior.epochs" in line
    assert "chance (10.0%)" in line and "\n" not in line and capsys.readouterr().err.strip() == line
