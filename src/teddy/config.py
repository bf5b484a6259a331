"""The one config loader: `load_config(cfg)` validates against workflow/schemas/config.schema.yaml,
fills in the schema's defaults, refuses non-finite numbers, then makes the checks the schema cannot
express (names that must exist in a registry or in the config). The Snakefile and the tests call
it; every stage then reads the filled-in values, never a default of its own."""

from __future__ import annotations

from pathlib import Path

from jsonschema import Draft202012Validator

from teddy.datasets import check_dataset_counts, dataset_info
from teddy.errors import TeddyError
from teddy.image_folder import check_tree, is_folder_dataset, setting
from teddy.methods import METHODS
from teddy.methods.registry import RecipeContext
from teddy.models import MODELS, check_image_size
from teddy.plugins import load_plugins
from teddy.pool import member_names
from teddy.protocols import check_protocols
from teddy.recipes import trained_epochs
from teddy.resources import data_shape
from teddy.schema import check_finite, coerce_strings, read_schema, validate, validator_filling_defaults


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


def check_config(cfg: dict, schema: dict | None = None) -> None:
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
        pool = recipe.get("pool")
        if pool is not None and pool not in cfg.get("pools", {}):
            raise TeddyError(f"distill.methods.{name}.pool names pool '{pool}', which is not under 'pools'")
        if pool is not None and recipe.get("pool_size"):
            members = member_names(cfg["pools"][pool])
            if members and int(recipe["pool_size"]) > len(members):
                raise TeddyError(f"distill.methods.{name}.pool_size={recipe['pool_size']} but pool '{pool}' "
                                 f"has {len(members)} members")
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
    smallest = check_dataset_counts(cfg)  # IPC against the smallest class after the split
    check_methods(cfg, image_size, smallest, schema or read_schema())


def check_methods(cfg: dict, image_size: int, smallest: tuple | None, schema: dict) -> None:
    """Each recipe against its method's entry (teddy.methods.registry.Method): the recipe keys
    every method shares (the schema's distill.methods) plus the method's own `recipe_keys`, none
    other, strings from --config first read as the scalars those keys ask for; then the method's
    own `check`."""
    shared = schema["properties"]["distill"]["properties"]["methods"]["additionalProperties"]["properties"]
    for name, recipe in cfg["distill"]["methods"].items():
        key = f"distill.methods.{name}"
        method = METHODS.lookup(recipe["method"], key=f"{key}.method")
        recipe_schema = {"type": "object", "additionalProperties": False,
                         "properties": {**shared, **method.recipe_keys}, "definitions": schema["definitions"]}
        coerce_strings(recipe, recipe_schema)  # --config strings of the method's own keys (the schema's are done)
        errors = sorted(Draft202012Validator(recipe_schema).iter_errors(recipe), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            where = ".".join([key, *(str(k) for k in e.absolute_path)])
            raise TeddyError(f"config key {where}: {e.message} (method {recipe['method']} reads: "
                             f"{', '.join(sorted(method.recipe_keys))})")
        if method.check is not None:
            pool = recipe.get("pool")
            members = member_names(cfg["pools"][pool])[: recipe.get("pool_size") or None] if pool else None
            ipcs = tuple(int(i) for i in recipe.get("ipc") or cfg["distill"]["ipc"])
            method.check(recipe, RecipeContext(key, image_size, ipcs, members, *(smallest or (None, ""))))


def recipe_epochs(recipe: dict, where: str) -> int:
    """The epochs a training recipe runs (teddy.recipes.trained_epochs), its error naming the key."""
    try:
        return trained_epochs(recipe)
    except TeddyError as e:
        raise TeddyError(f"{where}: {e}") from None


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
    for _ in validator_filling_defaults(schema).iter_errors(cfg):
        pass
    cfg["dataset"].setdefault("num_workers", 0)
    cfg["dataset"].setdefault("root", ".")
    fill_derived_defaults(cfg)
    load_plugins(cfg.get("plugins"))
    return cfg


def load_config(cfg: dict, schema_path=None) -> dict:
    """The one config loader (Snakefile and tests): non-finite numbers refused, schema validated
    with its defaults filled in, derived defaults, then check_config. Works in place (Snakemake's
    `config` stays the same dict) and returns cfg; raises TeddyError naming the key. Strings
    from --config are first read as the scalars the schema asks for (coerce_strings)."""
    schema = read_schema(schema_path)  # read once: the coercion and the validation share it
    coerce_strings(cfg, schema)
    check_finite(cfg)
    validate(cfg, schema)
    fill_derived_defaults(cfg)
    load_plugins(cfg["plugins"])  # before the checks: they may register methods, models, datasets
    check_config(cfg, schema)
    return cfg
