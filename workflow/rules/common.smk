# The config (loaded once), paths, target lists and every function the rules use.
import functools
from pathlib import Path

from snakemake.exceptions import WorkflowError

from teddy.config import load_config
from teddy.cpus import cpu_split, fit_workers
from teddy.errors import TeddyError
from teddy.image_folder import is_folder_dataset
from teddy.pool import member_names
from teddy.protocols import config_protocols, teacher_archs
from teddy.published import published_files
from teddy.jobs import eval_cell, eval_result_path, job_list, jobs_of, shard_count
from teddy.stages import stage
from teddy.machine import machine_from_config

# schema validation with its defaults filled in, then the semantic checks (teddy.config)
try:
    load_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
except TeddyError as exc:
    raise WorkflowError(f"bad config: {exc}")

R = config["results_dir"]
# where the data is and how fast jobs read it: a param of every stage, never recorded by Snakemake
MACHINE = machine_from_config(config)
# class-folder datasets: the stages read mean/std (unless configured) and the skipped files from
# this file, written by rule normalisation and declared as an input of every stage reading images
NORMALISATION_FILE = config["dataset"]["normalisation_file"]
DATA = [NORMALISATION_FILE] if is_folder_dataset(config["dataset"]) else []
BASE_ARCH = config["base"]["arch"]
PROTOCOLS = config_protocols(config)
# every job of the DAG (teddy.jobs.job_list); the target lists below are its files, so the job
# counts the cost scripts in benchmarks/ read are the workflow's own (tests/test_jobs.py)
JOBS = job_list(config)
CEILING_JSONS = [f"{R}/ceiling/{j['arch']}/{j['protocol']}/seed{j['seed']}.json" for j in jobs_of(JOBS, "ceiling")]
EVAL_JSONS = [eval_result_path(R, **j.wildcard_dict) for j in jobs_of(JOBS, "evaluate")]
# the pools with members on disk (a `fresh` pool has neither members nor manifest)
MANIFESTS = [f"{R}/pool/{j['pool']}/manifest.csv" for j in jobs_of(JOBS, "pool_manifest")]
# the base models' metrics (the teacher's test accuracy heads the tables) where the DAG trains any:
# a kd protocol's teachers, or the base model a pool reads
BASE_METRICS = [f"{R}/base/{j['arch']}/metrics.json" for j in jobs_of(JOBS, "train_base")]
PUBLISHED = config.get("published_results") or str(Path(workflow.basedir).parent / "config" / "published")
try:
    PUBLISHED_FILES = [str(p) for p in published_files(PUBLISHED)]
except TeddyError as exc:
    raise WorkflowError(f"bad config: {exc}")


wildcard_constraints:
    ipc=r"\d+",
    seed=r"\d+",
    shard=r"\d+",
    method=r"[^/]+",
    arch=r"[^/]+",
    pool=r"[^/]+",
    member=r"[^/]+",
    protocol=r"[^/]+",


def threads_for(rule_name, default=1):
    return int(config["threads"].get(rule_name, default))


def job_threads(name, default=1):
    """A rule's threads: the config's, scaled down with its workers where a GPU job would ask for
    more than cpus_per_gpu CPUs per GPU (teddy.cpus)."""
    def threads(wildcards):
        res = job_resources(name, tuple(sorted(wildcards.items())), 1)
        return cpu_split(threads_for(name, default), res["workers"], res["gpu"], config["cpus_per_gpu"])[0]

    return threads


def settings_of(name, wildcards):
    return stage(name).settings(config, dict(wildcards.items()))


def stage_params(name):
    """A rule's params: its stage's settings (recorded: a change reruns exactly its jobs) and the
    Machine (a dataclass, which Snakemake does not record: moving the data reruns nothing)."""
    return dict(settings=lambda wc: settings_of(name, wc), machine=MACHINE)


@functools.lru_cache(maxsize=None)
def job_resources(name, wildcards, attempt):
    """One job's resources (wildcards as a sorted tuple of items), computed once per attempt."""
    return stage(name).resources(stage(name).settings(config, dict(wildcards)), attempt, MACHINE)


def stage_resources(name):
    """A rule's cluster resources from its stage (teddy.stages.<name>.resources): memory and
    runtime grow with the set, the architecture's throughput and the retry `attempt`;
    cpus_per_task = the job's threads (overrides included) + the DataLoader workers that fit beside
    them under cpus_per_gpu; the job runs with that split (teddy.runner, teddy.cpus)."""
    def one(key):
        return lambda wc, attempt: job_resources(name, tuple(sorted(wc.items())), attempt)[key]

    def cpus(wc, threads):
        res = job_resources(name, tuple(sorted(wc.items())), 1)
        return threads + fit_workers(threads, res["workers"], res["gpu"], config["cpus_per_gpu"])

    return dict(mem_mb=one("mem_mb"), runtime=one("runtime"), gpu=one("gpu"), cpus_per_task=cpus)


def pool_members(pool):
    return [f"{R}/pool/{pool}/members/{m}.pt" for m in member_names(config["pools"][pool])]


def pool_members_of(wildcards):
    return pool_members(wildcards.pool)


def distill_pool_inputs(wildcards):
    pool = config["distill"]["methods"][wildcards.method].get("pool")
    return pool_members(pool) if pool else []


def snapshot_metrics(wildcards):
    """A prior pool with a recipe of its own takes its snapshots from its own run (train_prior)."""
    if config["pools"][wildcards.pool].get("recipe"):
        return f"{R}/pool/{wildcards.pool}/run/metrics.json"
    return f"{R}/base/{BASE_ARCH}/metrics.json"


def shard_done_files(wildcards):
    count = shard_count(config, wildcards.method, int(wildcards.ipc))
    return [f"{R}/distilled/{wildcards.method}/ipc{wildcards.ipc}/shards/{k}/done.json" for k in range(count)]


def teacher_models(wildcards):
    """A kd protocol's teacher(s): the base model, or one base model per architecture of its
    `teachers` ensemble (rule train_base, wildcard arch)."""
    return [f"{R}/base/{arch}/model.pt" for arch in teacher_archs(PROTOCOLS[wildcards.protocol], BASE_ARCH)]


def teacher_if_kd(wildcards):
    """The teacher(s), for a kd protocol's ceiling, or its evaluation with online teacher outputs."""
    online = config["evaluate"]["teacher_outputs"] == "online" or "method" not in wildcards.keys()
    return teacher_models(wildcards) if online else []


def soft_labels_if_stored(wildcards):
    if PROTOCOLS[wildcards.protocol]["labels"] != "kd" or config["evaluate"]["teacher_outputs"] != "stored":
        return []
    return [f"{R}/distilled/{wildcards.method}/ipc{wildcards.ipc}/soft_labels/{wildcards.protocol}/"
            f"seed{wildcards.seed}/meta.json"]


def all_targets():
    targets = MANIFESTS + [f"{R}/distilled/{j['method']}/ipc{j['ipc']}/grid.png" for j in jobs_of(JOBS, "gather")]
    targets += [f"{R}/tables/accuracy.md", f"{R}/tables/accuracy.csv", f"{R}/tables/efficiency.csv"]
    return targets
