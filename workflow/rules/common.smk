# Config checks, paths and target functions shared by every stage.
from snakemake.exceptions import WorkflowError

from teddy.config import check_config
from teddy.errors import TeddyError
from teddy.image_folder import is_folder_dataset
from teddy.pool import member_names
from teddy.provenance import stage_settings
from teddy import resources as res
from teddy.shards import shard_count

try:
    check_config(config)
except TeddyError as exc:
    raise WorkflowError(f"bad config: {exc}")

R = config["results_dir"]
# class-folder datasets: the stages read mean/std (unless configured) and the skipped files from
# this file, written by rule normalisation and declared as an input of every stage reading images
NORMALISATION_FILE = config["dataset"].setdefault("normalisation_file", f"{R}/data/normalisation.json")
DATA = [NORMALISATION_FILE] if is_folder_dataset(config["dataset"]) else []
BASE_ARCH = config["base"]["arch"]
THREADS = config.get("threads", {})
METHOD_NAMES = list(config["distill"]["methods"])
IPCS = [int(i) for i in config["distill"]["ipc"]]
STUDENTS = list(config["evaluate"]["students"])
SEEDS = [int(s) for s in config["evaluate"]["seeds"]]
# label protocols: a list, or one name (the older form); a wildcard of the evaluation paths
_labels = config["evaluate"].get("labels", "online_kd")
LABELS = [_labels] if isinstance(_labels, str) else list(_labels)

wildcard_constraints:
    ipc=r"\d+",
    seed=r"\d+",
    shard=r"\d+",
    method=r"[^/]+",
    arch=r"[^/]+",
    pool=r"[^/]+",
    member=r"[^/]+",
    labels=r"online_kd|stored|hard",


def settings_of(stage):
    """A rule param: the config values the job's output depends on (teddy.provenance), so that
    changing one reruns the jobs it affects and nothing else."""
    return lambda wc: stage_settings(config, stage, **dict(wc.items()))


def threads_for(rule_name, default=1):
    return int(THREADS.get(rule_name, default))


# Cluster resources per job, from the config (formulas documented in teddy/resources.py): memory
# and runtime grow with the set (IPC x classes), the architecture's throughput and the retry
# `attempt`; cpus_per_task = the rule's configured threads + DataLoader workers; GPUs = gpus_per_job.
def job_resources(rule_name, default_threads=1):
    def ipc_of(wc):
        return int(getattr(wc, "ipc", 1))

    return dict(
        gpu=res.gpus(config, rule_name),
        mem_mb=lambda wc, attempt: res.mem_mb(config, rule_name, ipc_of(wc), attempt),
        runtime=lambda wc, attempt: res.runtime_min(config, rule_name, ipc_of(wc), getattr(wc, "arch", None), attempt),
        cpus_per_task=res.cpus(config, rule_name, threads_for(rule_name, default_threads)),
    )


def pool_members(pool):
    return [f"{R}/pool/{pool}/members/{m}.pt" for m in member_names(config["pools"][pool])]


def distill_pool_inputs(wildcards):
    pool = config["distill"]["methods"][wildcards.method].get("pool")
    return pool_members(pool) if pool else []


def used_pools():
    """Pools with members on disk (and so a manifest); a `fresh` pool has neither."""
    pools = {r["pool"] for r in config["distill"]["methods"].values() if r.get("pool")}
    return sorted(p for p in pools if config["pools"][p]["generator"] != "fresh")


def all_targets():
    targets = [f"{R}/pool/{p}/manifest.csv" for p in used_pools()]
    targets += expand(f"{R}/distilled/{{method}}/ipc{{ipc}}/grid.png", method=METHOD_NAMES, ipc=IPCS)
    targets += [f"{R}/tables/accuracy.md", f"{R}/tables/accuracy.csv", f"{R}/tables/efficiency.csv"]
    return targets
