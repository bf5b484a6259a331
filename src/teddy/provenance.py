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
# distillation recipe keys that say how fast the set is made, not what it is (the set does not
# depend on them: tests/test_stack.py); distill.stack is left out for the same reason
DISTILL_SPEED_KEYS = ("stack", "compile")


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
        recipe = {k: v for k, v in cfg["distill"]["methods"][wildcards["method"]].items()
                  if k not in DISTILL_SPEED_KEYS}
        pool = recipe.get("pool")
        return {"dataset": data, "recipe": recipe, "seed": cfg["distill"].get("seed", 0),
                "pool": cfg["pools"][pool] if pool else None, "model": arch_spec(cfg, base["arch"])}
    if stage in ("relabel", "evaluate"):
        ev = cfg["evaluate"]
        settings = {"dataset": data, "recipe": ev["recipe"], "keep_topk": ev.get("keep_topk")}
        if stage == "evaluate":
            settings["model"] = arch_spec(cfg, wildcards["arch"])
        return settings
    if stage == "ceiling":
        return {"dataset": data, "recipe": cfg["ceiling"]["recipe"], "model": arch_spec(cfg, wildcards["arch"])}
    raise ValueError(f"no settings for stage '{stage}'")
