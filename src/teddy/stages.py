"""One function per workflow stage. Stage scripts in workflow/scripts/ only unpack Snakemake's
inputs and outputs and call these; everything here takes plain config values and paths."""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from teddy.data import dataset_info, load_split
from teddy.distilled_set import index_within_class
from teddy.errors import TeddyError
from teddy.distributed import barrier, in_launched_process, init_from_env, is_main, launch, processes_for
from teddy.io import atomic_path, load_json, save_json, save_text
from teddy.label_store import LabelStore, write_label_store
from teddy.methods import DistillTask, get_method, per_batch
from teddy.methods.base import SyntheticBatch
from teddy.models import arch_spec, model_from_spec
from teddy.pool import (FreshModelPool, choose_snapshot, load_model, load_pool, manifest_row, prune_channels,
                        save_model, write_manifest)
from teddy.pretrained import load_pretrained
from teddy.student_data import load_student_set
from teddy.efficiency import efficiency_table, peak_gpu_memory_mb
from teddy.plots import accuracy_vs_ipc
from teddy.published import load_published
from teddy.report import (accuracy_table, ceiling_table, check_cells, collect_results, paper_table, render_html,
                          render_latex, render_markdown, requested_ceiling_cells, requested_cells,
                          with_distill_seconds)
from teddy.shard_store import ShardWriter
from teddy.shard_store import gather as gather_shards
from teddy.shards import method_shards
from teddy.resume import remove_checkpoint
from teddy.train import evaluate_accuracy, fit, recalibrate_bn, resolve_device, targets_for


def build(cfg: dict, arch: str, seed: int | None = None):
    if seed is not None:
        torch.manual_seed(seed)  # the initial weights are part of what a seed controls
    return model_from_spec(arch_spec(cfg, arch), dataset_info(cfg["dataset"]))


# 0. data --------------------------------------------------------------------------------------

def normalisation(cfg: dict, out_json) -> dict:
    """Class-folder datasets: mean/std of the training split and a check of every image, cached."""
    from teddy.image_folder import compute_normalisation

    stats = compute_normalisation(cfg["dataset"])
    save_json(stats, out_json)
    return stats


# 1. base model ------------------------------------------------------------------------------

def train_snapshots(cfg: dict, arch: str, recipe: dict, wanted_epochs, snapshot_dir, checkpoint, desc: str):
    """Train `arch` from scratch on the real training set with `recipe`, keeping a snapshot of each
    wanted epoch (all when None); returns (model, history, snapshots, seconds)."""
    device = resolve_device(cfg.get("device", "auto"))
    train_set, val_set = load_split(cfg["dataset"], "train"), load_split(cfg["dataset"], "val")
    seed = int(cfg["base"].get("seed", 0))
    model = build(cfg, arch, seed=seed)
    recipe = {"eval_every": 1, **recipe}
    wanted = set(wanted_epochs or range(1, int(recipe["epochs"]) + 1))
    snapshot_dir = Path(snapshot_dir)

    def keep_snapshot(epoch, model, metrics):
        if epoch in wanted:
            save_model(snapshot_dir / f"epoch{epoch}.pt", copy.deepcopy(model),
                       {"epoch": epoch, "val_accuracy": metrics.get("eval_accuracy")})

    t0 = time.perf_counter()
    history = fit(model, train_set, recipe, device, seed=seed, eval_set=val_set,
                  on_epoch_end=keep_snapshot, checkpoint_path=checkpoint, desc=desc,
                  info=dataset_info(cfg["dataset"]))
    snapshots = {str(h["epoch"]): {"path": str(snapshot_dir / f"epoch{h['epoch']}.pt"),
                                   "val_accuracy": h["eval_accuracy"]} for h in history if h["epoch"] in wanted}
    return model, history, snapshots, time.perf_counter() - t0


def train_base(cfg: dict, model_out, metrics_out, snapshot_dir, checkpoint=None) -> dict:
    """Train the base model, or (base.weights) load pretrained weights and only evaluate them."""
    base = cfg["base"]
    device = resolve_device(cfg.get("device", "auto"))
    test_set = load_split(cfg["dataset"], "test")
    if base.get("weights"):
        model = build(cfg, base["arch"], seed=int(base.get("seed", 0)))
        source = load_pretrained(model, base["arch"], base["weights"], bool(base.get("download_weights", False)))
        model.to(device)
        history, snapshots, seconds, extra = [], {}, 0.0, {"weights": source}
    else:
        model, history, snapshots, seconds = train_snapshots(
            cfg, base["arch"], base["recipe"], base.get("snapshot_epochs"), snapshot_dir, checkpoint,
            desc=f"base {base['arch']}")
        extra = {}
    test_acc = evaluate_accuracy(model, test_set, device)
    metrics = {"arch": base["arch"], "test_accuracy": test_acc, "history": history, "train_seconds": seconds,
               "snapshots": snapshots, **extra}
    save_model(model_out, model, {"arch": base["arch"], "test_accuracy": test_acc, **extra})
    save_json(metrics, metrics_out)  # written last: the pool rules depend on it
    remove_checkpoint(checkpoint)
    return metrics


def train_prior(cfg: dict, pool_name: str, metrics_out, snapshot_dir, checkpoint=None) -> dict:
    """A prior pool's own short from-scratch run (pools.<name>.recipe), for its snapshots: a
    pretrained base model has no early epochs to take them from."""
    pool_cfg = cfg["pools"][pool_name]
    wanted = [int(e) for e in pool_cfg.get("epochs") or []] or None
    _, history, snapshots, seconds = train_snapshots(cfg, cfg["base"]["arch"], pool_cfg["recipe"], wanted,
                                                     snapshot_dir, checkpoint, desc=f"prior run {pool_name}")
    metrics = {"arch": cfg["base"]["arch"], "history": history, "train_seconds": seconds, "snapshots": snapshots}
    save_json(metrics, metrics_out)
    remove_checkpoint(checkpoint)
    return metrics


# 2. weak-model pool -------------------------------------------------------------------------

def pool_member(cfg: dict, pool_name: str, member: str, base_model, base_metrics, out_path, checkpoint=None) -> dict:
    pool_cfg = cfg["pools"][pool_name]
    generator = pool_cfg["generator"]
    info = dataset_info(cfg["dataset"])
    device = resolve_device(cfg.get("device", "auto"))
    test_set = load_split(cfg["dataset"], "test")
    finetune_epochs = 0
    if generator == "single":
        model, _ = load_model(base_model, what="base model")
        made_from = "base model"
    elif generator == "prior":
        snapshots = load_json(base_metrics)["snapshots"]
        epoch = choose_snapshot(member, {int(e): s["val_accuracy"] for e, s in snapshots.items()})
        model, _ = load_model(snapshots[str(epoch)]["path"], what="base-training snapshot")
        made_from = f"epoch {epoch}"
    elif generator == "post":
        # prune the trained base model, fine-tune briefly on real data, then re-estimate BN statistics
        ratio = float(member.removeprefix("prune"))
        model, _ = load_model(base_model, what="base model")
        model = prune_channels(model, ratio, (info.channels, info.image_size, info.image_size), info.num_classes)
        train_set = load_split(cfg["dataset"], "train")
        recipe = finetune_recipe(cfg, pool_cfg)
        seed = int(cfg["base"].get("seed", 0))
        fit(model, train_set, recipe, device, seed=seed, checkpoint_path=checkpoint,
            desc=f"fine-tune {pool_name}/{member}", info=info)
        recalibrate_bn(model, train_set, device, batches_to_use=int(pool_cfg.get("recalibrate_batches", 20)),
                       batch_size=int(recipe["batch_size"]), seed=seed)
        made_from = f"base pruned at ratio {ratio:g}"
        finetune_epochs = int(recipe["epochs"])
    else:
        raise TeddyError(f"pool generator '{generator}' has no members on disk (pools.{pool_name}.generator)")
    model.to(device)
    acc = evaluate_accuracy(model, test_set, device)
    row = manifest_row(member, generator, made_from, finetune_epochs, acc, model,
                       (info.channels, info.image_size, info.image_size))
    save_model(out_path, model, row)
    remove_checkpoint(checkpoint)
    return row


def finetune_recipe(cfg: dict, pool_cfg: dict) -> dict:
    """`pools.<name>.finetune`, else one epoch of the base recipe without warm-up."""
    recipe = pool_cfg.get("finetune") or {**cfg["base"]["recipe"], "epochs": 1, "warmup_epochs": 0}
    return {"eval_every": 0, **recipe}


def pool_manifest(member_paths, out_csv) -> list[dict]:
    rows = [load_model(p, what="pool member")[1] for p in member_paths]
    write_manifest(rows, out_csv)
    return rows


# 3. distillation ----------------------------------------------------------------------------

def distill_pool(cfg: dict, recipe: dict, real, device, pool_member_paths):
    """The models a method matches against: a fresh-model pool, the stored members, or None."""
    pool_name = recipe.get("pool")
    if pool_name and cfg["pools"][pool_name]["generator"] == "fresh":
        pool_cfg = cfg["pools"][pool_name]
        return FreshModelPool(lambda: build(cfg, cfg["base"]["arch"]), real, finetune_recipe(cfg, pool_cfg),
                              steps=int(pool_cfg.get("fresh_steps", 20)), device=device)
    if pool_member_paths:
        return load_pool(pool_member_paths, policy=recipe.get("sampling", "uniform"), size=recipe.get("pool_size"))
    return None


def distill(cfg: dict, method_name: str, ipc: int, shard: int, pool_member_paths, shard_dir) -> dict:
    """One shard of one (method, IPC) set: its batches (teddy.shards), written as PNGs batch by
    batch under shard_dir, then shard_dir/done.json. Batches an earlier start finished are
    skipped; the current one resumes from shard_dir/distill.ckpt."""
    recipe = cfg["distill"]["methods"][method_name]
    info = dataset_info(cfg["dataset"])
    ranges = method_shards(cfg, method_name, ipc, info.num_classes)
    if not 0 <= int(shard) < len(ranges):
        raise TeddyError(f"shard {shard} is beyond the set: {method_name} at IPC {ipc} has {len(ranges)} shard(s) "
                         f"(config key distill.batches_per_shard)")
    device = resolve_device(cfg.get("device", "auto"))
    seed = int(cfg["distill"].get("seed", 0))
    shard_dir = Path(shard_dir)
    checkpoint = shard_dir / "distill.ckpt"
    real = load_split(cfg["dataset"], "train")
    settings = {"method_name": method_name, "ipc": int(ipc), "seed": seed, "recipe": recipe,
                "dataset": cfg["dataset"], "pool": [str(p) for p in pool_member_paths]}
    writer = ShardWriter(shard_dir, settings, info.mean, info.std, checkpoint)
    method = get_method(recipe["method"])
    batches = ranges[int(shard)]
    todo = [b for b in batches if not writer.done(b)]
    if todo:
        pool = distill_pool(cfg, recipe, real, device, pool_member_paths)
        task = DistillTask(real=real, info=info, pool=pool, ipc=int(ipc), recipe=recipe, seed=seed, device=device,
                           checkpoint_path=checkpoint, name=method_name)
        if per_batch(recipe["method"]):
            if len(todo) < len(batches):
                print(f"resuming shard {shard}: batches {sorted(set(batches) - set(todo))} already written",
                      file=sys.stderr)
            method(replace(task, batches=todo, on_batch=writer.write_batch))
        else:  # a set-level method: the whole set at once, one "batch" 0
            result = method(task)
            index = result.index_in_class if result.index_in_class is not None else \
                torch.tensor(index_within_class(result.labels))
            writer.write_batch(SyntheticBatch(0, result.images, result.labels, index, result.log))
    done = writer.finish(int(shard), batches, real.class_names)
    remove_checkpoint(checkpoint)
    return done


def gather(cfg: dict, method_name: str, ipc: int, shard_dirs, meta_out, grid_out, log_out) -> dict:
    """Check every shard of one (method, IPC) and assemble the set: images/, meta.json, grid.png, log.json."""
    info = dataset_info(cfg["dataset"])
    batches = sum(len(r) for r in method_shards(cfg, method_name, ipc, info.num_classes))
    return gather_shards(shard_dirs, Path(meta_out).parent, grid_out, log_out, method=method_name, ipc=int(ipc),
                         num_batches=batches, info=info)


# 4-5. relabel and evaluate ------------------------------------------------------------------

def student_recipe(cfg: dict, num_images: int) -> dict:
    """evaluate.recipe with the batch capped at the distilled set's size (shared by relabel)."""
    recipe = dict(cfg["evaluate"]["recipe"])
    recipe["batch_size"] = min(int(recipe["batch_size"]), num_images)
    return recipe


def student_chunks(cfg: dict, device: torch.device) -> int:
    """Processes x accumulation steps of a student run: CutMix/Mixup partners and stored labels
    are drawn per chunk, so relabel and evaluate must agree on it."""
    return processes_for(cfg, device) * int(cfg["evaluate"]["recipe"].get("accumulate", 1))


def student_set(cfg: dict, distilled_meta):
    ev = cfg["evaluate"]
    return load_student_set(distilled_meta, float(ev.get("in_memory_max_mb", 1024)),
                            int(ev.get("num_workers", cfg["dataset"].get("num_workers", 0))))


def relabel(cfg: dict, seed: int, distilled_meta, teacher_path, out_meta) -> dict:
    """Stored soft labels (evaluate.labels: stored) for the student runs of one seed: one file
    per epoch beside `out_meta` (teddy.label_store)."""
    device = resolve_device(cfg.get("device", "auto"))
    train_set, meta = student_set(cfg, distilled_meta)
    info = dataset_info(cfg["dataset"])
    teacher, _ = load_model(teacher_path, what="teacher (base model)")
    return write_label_store(out_meta, train_set, teacher, student_recipe(cfg, len(train_set)), int(seed), device,
                             set_hash=meta["set_hash"], num_classes=info.num_classes, image_size=info.image_size,
                             keep_topk=cfg["evaluate"].get("keep_topk"), chunks=student_chunks(cfg, device),
                             mean=info.mean, std=info.std, num_workers=getattr(train_set, "num_workers", 0))


def evaluate(cfg: dict, method_name: str, ipc: int, arch: str, seed: int, labels: str, distilled_meta,
             teacher_path, out_json, checkpoint=None, label_store_meta=None) -> dict:
    """Train a fresh student on the distilled set with `labels` (online_kd, stored or hard) and
    test it. With more than one process (gpus_per_job / evaluate.processes) this launches
    itself under torchrun; rank 0 writes the result."""
    device = resolve_device(cfg.get("device", "auto"))
    processes = processes_for(cfg, device)
    if processes > 1 and not in_launched_process():
        launch(processes, "teddy.stages:evaluate", cfg, method_name, ipc, arch, seed, labels, str(distilled_meta),
               str(teacher_path), str(out_json), checkpoint and str(checkpoint),
               label_store_meta and str(label_store_meta))
        return load_json(out_json)
    device = init_from_env(device)
    info = dataset_info(cfg["dataset"])
    train_set, meta = student_set(cfg, distilled_meta)
    teacher = store = None
    recipe = student_recipe(cfg, len(train_set))
    if labels == "online_kd":
        teacher, _ = load_model(teacher_path, what="teacher (base model)")
    elif labels == "stored":
        if not label_store_meta:
            raise TeddyError("labels 'stored' (evaluate.labels) but no soft-label store was given (rule relabel)")
        store = LabelStore(label_store_meta, set_hash=meta["set_hash"], recipe=recipe, seed=int(seed),
                           chunks=processes * int(recipe.get("accumulate", 1)), num_images=len(train_set),
                           num_classes=info.num_classes, keep_topk=cfg["evaluate"].get("keep_topk"))
    elif labels != "hard":
        raise TeddyError(f"unknown evaluate.labels '{labels}' (online_kd, stored or hard)")
    student = build(cfg, arch, seed=int(seed))
    t0 = time.perf_counter()
    fit(student, train_set, recipe, device, seed=int(seed), targets=targets_for(teacher, store),
        checkpoint_path=checkpoint, desc=f"student {arch} {method_name} ipc{ipc} {labels} seed{seed}", info=info)
    result = {"method": method_name, "ipc": int(ipc), "arch": arch, "seed": int(seed), "labels": labels,
              "processes": processes, "train_seconds": time.perf_counter() - t0, "peak_gpu_mb": peak_gpu_memory_mb()}
    if is_main():
        result["test_accuracy"] = evaluate_accuracy(student, load_split(cfg["dataset"], "test"), device)
        save_json(result, out_json)
        remove_checkpoint(checkpoint)
    barrier()
    return result


# 5b. ceiling: each student on the whole real training set --------------------------------

def ceiling(cfg: dict, arch: str, labels: str, seed: int, teacher_path, out_json, checkpoint=None) -> dict:
    """The ceiling row of a (student, label protocol) block: `ceiling.recipe` on the whole real
    training set (validation split held out as everywhere), hard labels or online KD from the base
    model; top-1 on the real test set."""
    if labels not in ("hard", "online_kd"):
        raise TeddyError(f"ceiling label protocol must be hard or online_kd, got '{labels}'")
    device = resolve_device(cfg.get("device", "auto"))
    train_set = load_split(cfg["dataset"], "train")
    teacher = load_model(teacher_path, what="teacher (base model)")[0] if labels == "online_kd" else None
    student = build(cfg, arch, seed=int(seed))
    t0 = time.perf_counter()
    fit(student, train_set, {"eval_every": 0, **cfg["ceiling"]["recipe"]}, device, seed=int(seed),
        targets=targets_for(teacher), checkpoint_path=checkpoint, desc=f"ceiling {arch} {labels} seed{seed}",
        info=dataset_info(cfg["dataset"]))
    result = {"arch": arch, "labels": labels, "seed": int(seed), "train_images": len(train_set),
              "test_accuracy": evaluate_accuracy(student, load_split(cfg["dataset"], "test"), device),
              "train_seconds": time.perf_counter() - t0, "peak_gpu_mb": peak_gpu_memory_mb()}
    save_json(result, out_json)
    remove_checkpoint(checkpoint)
    return result


# 6. aggregate -------------------------------------------------------------------------------

def aggregate(cfg: dict, eval_jsons, ceiling_jsons, benchmark_files, published_path, table_csv, table_md, table_tex,
              table_html, efficiency_csv, plots: dict) -> pd.DataFrame:
    """The paper tables (CSV long form, Markdown, LaTeX, HTML), the efficiency table and one
    accuracy-vs-IPC plot per label protocol (`plots`: protocol -> PNG path). Every requested cell
    must have its result file; published figures come from `published_path` (file or folder)."""
    dataset = cfg["dataset"]["name"]
    requested = requested_cells(cfg)
    results = collect_results(eval_jsons)
    check_cells(results, requested)
    results = results.merge(requested, on=list(requested.columns))  # only what this config asks for
    measured = with_distill_seconds(accuracy_table(results), Path(cfg["results_dir"]) / "distilled")
    ceilings = None
    wanted_ceilings = requested_ceiling_cells(cfg)
    if not wanted_ceilings.empty:
        found = collect_results(ceiling_jsons, what="ceiling result")
        check_cells(found, wanted_ceilings, what="ceiling")
        ceilings = ceiling_table(found.merge(wanted_ceilings, on=list(wanted_ceilings.columns)))
    published = load_published(published_path, dataset) if published_path else None
    table = paper_table(measured, ceilings, published, method_order=list(cfg["distill"]["methods"]))
    efficiency = efficiency_table(benchmark_files, cfg["distill"]["methods"])
    with atomic_path(table_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(efficiency_csv) as tmp:
        efficiency.to_csv(tmp, index=False)
    save_text(render_markdown(dataset, table, efficiency), table_md)
    save_text(render_latex(dataset, table), table_tex)
    save_text(render_html(dataset, table, efficiency), table_html)
    for labels, png in plots.items():
        accuracy_vs_ipc(table, labels, png, dataset)
    return table
