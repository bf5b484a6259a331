"""The one config loader: `load_config(cfg)` validates against workflow/schemas/config.schema.yaml,
fills in the schema's defaults, refuses non-finite numbers, then makes the checks the schema cannot
express (names that must exist in a registry or in the config). The Snakefile and the tests call
it; every stage then reads the filled-in values, never a default of its own."""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from teddy.data import dataset_info
from teddy.datasets import check_dataset_counts
from teddy.errors import TeddyError
from teddy.image_folder import check_tree, is_folder_dataset, setting
from teddy.methods import METHODS, rded
from teddy.models import MODELS, check_image_size
from teddy.pool import member_names
from teddy.protocols import check_protocols
from teddy.stages.common import data_shape
from teddy.train import trained_epochs


def check_dataset(cfg: dict) -> int:
    """The dataset section; returns the image size. For class-folder datasets the tree is checked
    too (classes present, none empty, none below the largest IPC) when dataset.root exists here:
    on a login node without the data, the jobs check it when they run."""
    dataset = cfg["dataset"]
    if not is_folder_dataset(dataset):
        return dataset_info(dataset).image_size
    for key in ("image_size", "channels"):
        if setting(dataset, key) is None:
            raise TeddyError(f"dataset.{key} is required for dataset.name: {dataset['name']}")
    channels = int(setting(dataset, "channels"))
    for key in ("mean", "std"):
        values = setting(dataset, key)
        if values is not None and len(values) != channels:
            raise TeddyError(f"dataset.{key} has {len(values)} values but dataset.channels is {channels}")
    if ("mean" in dataset) != ("std" in dataset):
        raise TeddyError("give both dataset.mean and dataset.std, or neither (then they are computed)")
    if Path(dataset["root"]).is_dir():
        check_tree(dataset, min_per_class=max(int(i) for i in cfg["distill"]["ipc"]))
    return int(setting(dataset, "image_size"))


def check_config(cfg: dict) -> None:
    """Raise TeddyError naming the offending key; called when the workflow loads."""
    image_size = check_dataset(cfg)
    archs = [cfg["base"]["arch"]] + list(cfg["evaluate"]["students"])
    for arch in archs:
        if arch not in MODELS:
            raise TeddyError(f"unknown architecture '{arch}' (config keys base.arch / evaluate.students); "
                             f"registered: {sorted(MODELS)}")
    check_image_size(cfg["base"]["arch"], image_size, **(cfg.get("arch_options") or {}).get(cfg["base"]["arch"], {}))
    check_protocols(cfg, image_size)
    for name, pool in cfg.get("pools", {}).items():
        member_names(pool)
    for ipc in cfg["distill"]["ipc"]:
        if int(ipc) < 1:
            raise TeddyError(f"IPC must be >= 1, got {ipc} (config key distill.ipc)")
    for name, recipe in cfg["distill"]["methods"].items():
        extra = sorted(set(int(i) for i in recipe.get("ipc") or []) - set(int(i) for i in cfg["distill"]["ipc"]))
        if extra:
            raise TeddyError(f"distill.methods.{name}.ipc has {extra}, which distill.ipc does not list")
        if recipe["method"] not in METHODS:
            raise TeddyError(f"unknown distillation method '{recipe['method']}' (config key "
                             f"distill.methods.{name}.method); known: {sorted(METHODS)}")
        pool = recipe.get("pool")
        if pool is not None and pool not in cfg.get("pools", {}):
            raise TeddyError(f"distill.methods.{name}.pool names pool '{pool}', which is not under 'pools'")
        if pool is not None and recipe.get("pool_size"):
            members = member_names(cfg["pools"][pool])
            if members and int(recipe["pool_size"]) > len(members):
                raise TeddyError(f"distill.methods.{name}.pool_size={recipe['pool_size']} but pool '{pool}' "
                                 f"has {len(members)} members")
        if recipe["method"] == "rded":
            members = member_names(cfg["pools"][pool])[: recipe.get("pool_size") or None] if pool else []
            rded.check_recipe(recipe, image_size, cfg["distill"]["ipc"], members,
                              f"distill.methods.{name}")
    for name, recipe in cfg["distill"]["methods"].items():
        if recipe["method"] == "import" and not recipe.get("path"):
            raise TeddyError(f"distill.methods.{name} is an import but names no ImageFolder (key path)")
    topk = cfg["evaluate"].get("keep_topk")
    num_classes = None if topk is None else data_shape(cfg["dataset"])[0]
    if topk is not None and int(topk) > num_classes:
        raise TeddyError(f"evaluate.keep_topk={topk} exceeds the dataset's {num_classes} classes")
    snapshots = cfg["base"].get("snapshot_epochs")
    epochs = recipe_epochs(cfg["base"]["recipe"], "base.recipe")
    for name, pool in cfg.get("pools", {}).items():
        if pool["generator"] == "prior" and cfg["base"].get("weights") and not pool.get("recipe"):
            raise TeddyError(f"pools.{name}: base.weights is set, so the base model has no training snapshots; "
                             f"give pools.{name}.recipe (a short from-scratch run to take them from)")
        if pool.get("recipe"):
            if pool["generator"] != "prior":
                raise TeddyError(f"pools.{name}.recipe is only for prior pools (generator: {pool['generator']})")
            trained = recipe_epochs(pool["recipe"], f"pools.{name}.recipe")
            for e in pool.get("epochs") or []:
                if int(e) > trained:
                    raise TeddyError(f"pools.{name}.epochs asks for epoch {e}, beyond its own run "
                                     f"(pools.{name}.recipe trains {trained} epochs)")
            continue
        for e in pool.get("epochs") or []:
            if int(e) > epochs or (snapshots and int(e) not in snapshots):
                raise TeddyError(f"pools.{name}.epochs asks for epoch {e}, beyond the base run's snapshots "
                                 f"(base.recipe.epochs={epochs}, base.snapshot_epochs={snapshots})")
    check_dataset_counts(cfg)  # IPC and RDED candidates against the smallest class after the split


SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def recipe_epochs(recipe: dict, where: str) -> int:
    """The epochs a training recipe runs (teddy.train.trained_epochs), its error naming the key."""
    try:
        return trained_epochs(recipe)
    except TeddyError as e:
        raise TeddyError(f"{where}: {e}") from None


def key_path(path) -> str:
    return ".".join(str(k) for k in path) or "(top level)"


def check_finite(value, path=()) -> None:
    """Refuse NaN and infinities anywhere (YAML's .nan/.inf), naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise TeddyError(f"config key {key_path(path)} is {value}: numbers must be finite")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, (*path, i))


def _validator_filling_defaults(schema: dict):
    """A Draft 2020-12 validator that writes each property's `default` where the key is absent
    (jsonschema FAQ); nested sections are filled once they exist."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, _copy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def _copy(value):
    import copy

    return copy.deepcopy(value)


_SCALARS = {"null": (type(None),), "boolean": (bool,), "integer": (int,), "number": (int, float)}


def _parse_scalar(text: str, types) -> object:
    """`text` as the first of `types` (JSON Schema names) it spells, else unchanged."""
    word = text.strip()
    for kind in ("null", "boolean", "integer", "number"):
        if kind not in types:
            continue
        if kind == "null" and word in ("null", "Null", "NULL", "~"):
            return None
        if kind == "boolean" and word.lower() in ("true", "false"):
            return word.lower() == "true"
        if kind == "integer" and re.fullmatch(r"[-+]?\d+", word):
            return int(word)
        if kind == "number":
            try:
                return float(word)
            except ValueError:
                pass
    return text


def coerce_strings(value, schema: dict, root: dict | None = None):
    """Snakemake's --config reads the values inside a dict as strings (`--config
    'dataset={root: d, download: true}'` gives download 'true'): each string where the schema asks
    for a boolean, integer, number or null (and not a string) becomes one if it spells one.
    Returns the value; dicts and lists are changed in place."""
    root = root or schema
    while isinstance(schema, dict) and "$ref" in schema:  # local references only: #/definitions/<name>
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {})
        schema = target
    if not isinstance(schema, dict):
        return value
    if isinstance(value, str):
        types = schema.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        if not types and "enum" in schema:
            types = [k for k, t in _SCALARS.items() if any(type(v) in t for v in schema["enum"])]
        if "string" in types or not any(t in _SCALARS for t in types):
            return value
        return _parse_scalar(value, types)
    if isinstance(value, dict):
        properties, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = coerce_strings(item, sub, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [coerce_strings(item, schema["items"], root) for item in value]
    return value


def read_schema(schema_path=None) -> dict:
    """The config schema (workflow/schemas/config.schema.yaml unless another file is named)."""
    return yaml.safe_load(Path(schema_path or SCHEMA).read_text())


def validate_schema(cfg: dict, schema_path=None) -> dict:
    """Validate in place against the schema, filling in its defaults; one-line TeddyError."""
    return _validate(cfg, read_schema(schema_path))


def _validate(cfg: dict, schema: dict) -> dict:
    errors = sorted(_validator_filling_defaults(schema).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise TeddyError(f"config key {key_path(e.absolute_path)}: {e.message}")
    return cfg


def fill_derived_defaults(cfg: dict) -> None:
    """Defaults that depend on other keys, which a schema cannot state."""
    cfg["evaluate"].setdefault("num_workers", cfg["dataset"]["num_workers"])
    cfg["dataset"].setdefault("normalisation_file", f"{cfg['results_dir']}/data/normalisation.json")


def fill_defaults(cfg: dict, schema_path=None) -> dict:
    """Only the schema's defaults, in place, for a partial config (tests that run one stage):
    missing required sections are added empty, nothing is checked."""
    for section in ("dataset", "base", "distill", "evaluate"):
        cfg.setdefault(section, {})
    cfg.setdefault("results_dir", "results")
    schema = read_schema(schema_path)
    for _ in _validator_filling_defaults(schema).iter_errors(cfg):
        pass
    cfg["dataset"].setdefault("num_workers", 0)
    cfg["dataset"].setdefault("root", ".")
    fill_derived_defaults(cfg)
    return cfg


def load_config(cfg: dict, schema_path=None) -> dict:
    """The one config loader (Snakefile and tests): non-finite numbers refused, schema validated
    with its defaults filled in, derived defaults, then check_config. Works in place (Snakemake's
    `config` stays the same dict) and returns cfg; raises TeddyError naming the key. Strings
    from --config are first read as the scalars the schema asks for (coerce_strings)."""
    schema = read_schema(schema_path)  # read once: the coercion and the validation share it
    coerce_strings(cfg, schema)
    check_finite(cfg)
    _validate(cfg, schema)
    fill_derived_defaults(cfg)
    check_config(cfg)
    return cfg
