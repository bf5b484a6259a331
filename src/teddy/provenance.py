"""What each stage's output depends on in the config, handed to Snakemake as a rule param.

The stages read the config directly, which Snakemake does not track: without this, a changed
recipe (say `ceiling.recipe.epochs`) left every finished output "up to date". As a param, the
settings are recorded with each output and a change reruns exactly the jobs it affects
(Snakemake's `params` rerun trigger). The lists that only say which cells exist (`distill.ipc`,
`evaluate.seeds`, `evaluate.students`, the label protocols, the methods) are left out, so adding a
cell reruns nothing; so are paths and worker counts, which change where or how fast, not what.
"""

from __future__ import annotations

from teddy.models import arch_spec

# dataset keys that say where the data is or how fast it is read, not what it is
_DATASET_LOCATION_KEYS = ("root", "download", "num_workers", "normalisation_file")
# student recipe keys that change how fast a run is, not its numbers
_RECIPE_SPEED_KEYS = ("compile",)


def dataset_settings(cfg: dict) -> dict:
    return {k: v for k, v in cfg["dataset"].items() if k not in _DATASET_LOCATION_KEYS}


def stage_settings(cfg: dict, stage: str, **wildcards) -> dict:
    """The config values the output of one job of `stage` (with its wildcards) depends on."""
    data = dataset_settings(cfg)
    base = cfg["base"]
    if stage == "normalisation":
        return {"dataset": data}
    if stage == "train_base":
        return {"dataset": data, "base": base, "model": arch_spec(cfg, base["arch"])}
    if stage in ("train_prior", "pool_member"):
        return {"dataset": data, "base": base, "model": arch_spec(cfg, base["arch"]),
                "pool": cfg["pools"][wildcards["pool"]]}
    if stage == "distill":
        recipe = cfg["distill"]["methods"][wildcards["method"]]
        pool = recipe.get("pool")
        return {"dataset": data, "recipe": recipe, "seed": cfg["distill"].get("seed", 0),
                "pool": cfg["pools"][pool] if pool else None, "model": arch_spec(cfg, base["arch"])}
    if stage in ("relabel", "evaluate"):
        from teddy.label_store import STORE_FORMAT_VERSION

        ev = cfg["evaluate"]
        # recipe.compile (torch.compile) changes how fast, not what; so do evaluate's
        # in_memory_max_mb, device_memory_fraction and num_workers (every placement of the set
        # gives the same batches), which are not recipe keys
        recipe = {k: v for k, v in ev["recipe"].items() if k not in _RECIPE_SPEED_KEYS}
        settings = {"dataset": data, "recipe": recipe, "keep_topk": ev.get("keep_topk")}
        if stage == "relabel":  # a store of an older format is rebuilt, not refused by evaluate
            settings["label_store_format"] = STORE_FORMAT_VERSION
        if stage == "evaluate":
            settings["model"] = arch_spec(cfg, wildcards["arch"])
        return settings
    if stage == "ceiling":
        return {"dataset": data, "recipe": cfg["ceiling"]["recipe"], "model": arch_spec(cfg, wildcards["arch"])}
    raise ValueError(f"no settings for stage '{stage}'")
