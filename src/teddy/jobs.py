"""The workflow's jobs, read from a loaded config: which sets each method makes (its IPCs, its
student seeds), how many distill shards each (method, IPC) is cut into, where each student's
result lies, and what of a method's recipe its jobs record. The rules' targets
(workflow/rules/common.smk), the reports and the cost scripts all read the jobs from here."""

from __future__ import annotations

from dataclasses import dataclass

from teddy.datasets import dataset_info
from teddy.image_folder import class_folders, is_folder_dataset
from teddy.methods import full_recipe, per_batch
from teddy.pool import member_names
from teddy.protocols import cells, config_protocols, teacher_archs
from teddy.shards import num_batches, shard_ranges


def recipe_shards(recipe: dict, ipc: int, classes: int, batches_per_shard) -> list[range]:
    """The shards (ranges of batch indices) of one method recipe at one IPC, for a dataset of
    `classes` classes. A set-level method (teddy.methods.per_batch false: herding, whole-set
    selections) is one shard holding the whole set, written as one "batch" 0."""
    recipe = full_recipe(recipe)
    if not per_batch(recipe["method"]):
        return [range(1)]
    n = num_batches(int(classes), int(ipc), int(recipe["batch_size"]))  # every per-batch method defaults it
    return shard_ranges(n, batches_per_shard)


def method_ipcs(distill: dict, method_name: str) -> list[int]:
    """The IPCs a method's sets are made at: its own `ipc` list, else distill.ipc."""
    recipe = distill["methods"][method_name]
    return [int(i) for i in (recipe.get("ipc") or distill["ipc"])]


def method_eval_seeds(cfg: dict, method_name: str) -> list[int]:
    """The seeds a method's students are trained with: its own `eval_seeds`, else evaluate.seeds
    (a deterministic selection such as herding varies only with the student's seed)."""
    recipe = cfg["distill"]["methods"][method_name]
    return [int(s) for s in (recipe.get("eval_seeds") or cfg["evaluate"]["seeds"])]


def eval_cell(method, ipc, arch, protocol, seed) -> str:
    """One student's cell as a relative path, method/ipc<N>/<arch>/<protocol>/seed<S>: the one
    spelling behind its result, log and benchmark files (pass wildcard strings such as "{method}"
    for the rule's patterns)."""
    return f"{method}/ipc{ipc}/{arch}/{protocol}/seed{seed}"


def eval_result_path(results_dir, method, ipc, arch, protocol, seed) -> str:
    """Where a student's evaluation result is written: the rule's output, the workflow's targets
    and the reporting scripts all call this."""
    return f"{results_dir}/eval/{eval_cell(method, ipc, arch, protocol, seed)}.json"


def method_shards(cfg: dict, method_name: str, ipc: int, classes: int) -> list[range]:
    """recipe_shards of one (method, IPC) of the config."""
    return recipe_shards(cfg["distill"]["methods"][method_name], ipc, classes, cfg["distill"].get("batches_per_shard"))


def shard_count(cfg: dict, method_name: str, ipc: int) -> int:
    """How many distill jobs the workflow makes for one (method, IPC), known when it loads (the
    class count is read only when distill.batches_per_shard asks for more than one shard)."""
    if cfg["distill"].get("batches_per_shard") is None or \
            not per_batch(cfg["distill"]["methods"][method_name]["method"]):
        return 1
    return len(method_shards(cfg, method_name, ipc, num_classes(cfg["dataset"])))


def num_classes(dataset_cfg: dict) -> int:
    """The class count, known when the workflow loads (a class-folder dataset's normalisation file,
    which dataset_info may need for mean/std, does not exist yet then)."""
    return len(class_folders(dataset_cfg)) if is_folder_dataset(dataset_cfg) else dataset_info(dataset_cfg).num_classes


@dataclass(frozen=True)
class Job:
    """One job of the workflow: its rule and its wildcards as (name, value) pairs in the rule's
    order (a tuple, so that a Job hashes; `wildcard_dict` for a stage's settings)."""

    rule: str
    wildcards: tuple[tuple[str, object], ...] = ()

    @property
    def wildcard_dict(self) -> dict:
        return dict(self.wildcards)

    def __getitem__(self, name: str):
        return self.wildcard_dict[name]


def _job(rule: str, **wildcards) -> Job:
    return Job(rule, tuple(wildcards.items()))


def used_pools(cfg: dict) -> list[str]:
    """The pools the methods read that have members on disk (and so a manifest); a `fresh` pool
    has neither."""
    pools = {r["pool"] for r in cfg["distill"]["methods"].values() if r.get("pool")}
    return sorted(p for p in pools if cfg["pools"][p]["generator"] != "fresh")


def base_archs(cfg: dict) -> list[str]:
    """The architectures rule train_base trains: the base model's when a kd protocol's teacher or
    a pool reads it, then every other teacher architecture of the config's kd protocols."""
    base = cfg["base"]["arch"]
    teachers = {arch for p in config_protocols(cfg).values() for arch in teacher_archs(p, base)}  # empty: no kd
    return ([base] if teachers or used_pools(cfg) else []) + sorted(teachers - {base})


def stored_label_protocols(cfg: dict) -> list[str]:
    """The evaluated protocols whose teacher outputs rule relabel writes: kd labels under
    evaluate.teacher_outputs: stored."""
    if cfg["evaluate"]["teacher_outputs"] != "stored":
        return []
    protocols = config_protocols(cfg)
    evaluated = dict.fromkeys(name for _, name in cells(cfg))  # in order, once each
    return [name for name in evaluated if protocols[name]["labels"] == "kd"]


def job_list(cfg: dict) -> list[Job]:
    """Every job of the workflow's DAG for a loaded config (teddy.config.load_config), from a
    fresh results_dir, upstream rules first; the `all` target rule is not a job of its own.
    workflow/rules/common.smk builds its targets from it and tests/test_jobs.py checks it against
    a dry run; the cost scripts in benchmarks/ count it."""
    jobs = [_job("normalisation")] if is_folder_dataset(cfg["dataset"]) else []
    jobs += [_job("train_base", arch=arch) for arch in base_archs(cfg)]
    for pool in used_pools(cfg):
        if cfg["pools"][pool].get("recipe"):  # its snapshots come from its own run
            jobs.append(_job("train_prior", pool=pool))
        jobs += [_job("pool_member", pool=pool, member=m) for m in member_names(cfg["pools"][pool])]
        jobs.append(_job("pool_manifest", pool=pool))
    stored = stored_label_protocols(cfg)
    grid = cells(cfg)
    for method in cfg["distill"]["methods"]:
        seeds = method_eval_seeds(cfg, method)
        for ipc in method_ipcs(cfg["distill"], method):
            jobs += [_job("distill", method=method, ipc=ipc, shard=k) for k in range(shard_count(cfg, method, ipc))]
            jobs.append(_job("gather", method=method, ipc=ipc))
            jobs += [_job("relabel", method=method, ipc=ipc, protocol=p, seed=s) for p in stored for s in seeds]
            jobs += [_job("evaluate", method=method, ipc=ipc, arch=arch, protocol=p, seed=s)
                     for arch, p in grid for s in seeds]
    ceiling_seeds = [int(s) for s in (cfg.get("ceiling") or {}).get("seeds", [])]
    jobs += [_job("ceiling", arch=arch, protocol=p, seed=s) for arch, p in grid for s in ceiling_seeds]
    jobs.append(_job("aggregate"))
    return jobs


def jobs_of(jobs: list[Job], rule: str) -> list[Job]:
    return [j for j in jobs if j.rule == rule]


# recipe keys that set how fast a set is made, not what it is (the set does not depend on them:
# tests/test_stack.py): they reach the job through the Machine, so changing them reruns nothing
# and a rerun shard keeps its finished batches
SPEED_KEYS = ("stack", "compile")


# keys of a method's entry that say which sets are made, not how: the set's seed and its IPCs; and
# how many students evaluate them (eval_seeds)
SET_KEYS = ("seed", "ipc", "eval_seeds")


def method_recipe(cfg: dict, method: str) -> dict:
    """distill.methods.<method> without its speed keys and set keys."""
    return {k: v for k, v in cfg["distill"]["methods"][method].items() if k not in SPEED_KEYS + SET_KEYS}
