"""Rule distill: one shard of one (method, IPC) set, its synthetic batches (teddy.shards) written
as PNGs batch by batch, then done.json. The shard's batch markers and meta.json hash and record
this stage's settings, so a shard started again keeps every batch finished under the same
settings (moving the dataset changes none)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from teddy.datasets import dataset_info, load_split
from teddy.distilled_set import index_within_class
from teddy.errors import TeddyError
from teddy.jobs import method_recipe, recipe_shards
from teddy.machine import Machine, dataset_cfg, dataset_settings, resolve_device
from teddy.methods import DistillTask, SyntheticBatch, full_recipe, get_method, lookup, per_batch
from teddy.models import arch_spec, model_from_spec
from teddy.pool import FreshModelPool, finetune_recipe, load_pool
from teddy.resources import compute_seconds, request, shape
from teddy.resume import remove_checkpoint
from teddy.shard_store import ShardWriter


def settings(cfg: dict, wildcards: dict) -> dict:
    method = str(wildcards["method"])
    recipe = method_recipe(cfg, method)
    pool_name = recipe.get("pool")
    pool = cfg["pools"][pool_name] if pool_name else None
    seed = cfg["distill"]["methods"][method].get("seed", cfg["distill"]["seed"])
    out = {"dataset": dataset_settings(cfg), "method": method, "ipc": int(wildcards["ipc"]),
           "shard": int(wildcards["shard"]), "seed": int(seed), "recipe": recipe,
           "batches_per_shard": cfg["distill"]["batches_per_shard"], "pool_name": pool_name, "pool": pool,
           "model": arch_spec(cfg, cfg["base"]["arch"])}
    if pool is not None and pool["generator"] == "fresh":  # the fresh models' steps follow this recipe
        out["finetune"] = finetune_recipe(pool, cfg["base"]["recipe"])
    return out


def job_images(settings: dict, classes: int) -> tuple[int, int]:
    """(images one job optimises, images of one synthetic batch): the set, or one shard's batches
    (set-level methods always hold the whole set)."""
    full = full_recipe(settings["recipe"])
    whole = int(settings["ipc"]) * classes
    batch = min(int(full.get("batch_size", 100)), whole)
    if settings["batches_per_shard"] is None or not per_batch(full["method"]):
        return whole, batch
    return min(whole, int(settings["batches_per_shard"]) * batch), batch


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    """runtime = 1.5 x iterations x images of one job (or the method's own `work` per iteration: dc
    reads real batches) training steps of the base architecture (teddy.resources.compute_seconds)
    + 10 min (one synthetic image-iteration costs about one student training image: measured 29 s
    per 1000 steps of a batch of 100 on ResNet-18, H100, benchmarks/gpu_distill_batch.py); memory = 4 GB + 0.5 GB per worker
    + 4 copies of one synthetic batch (pixels, gradient, two Adam moments)."""
    classes, channels, size = shape(settings, machine)
    images, batch = job_images(settings, classes)
    full = full_recipe(settings["recipe"])
    work = lookup(full["method"]).work  # a method reading more than its synthetic images says how much
    passes = work(full, int(settings["ipc"]), classes) if work is not None else images
    seconds = compute_seconds(settings["model"], (classes, channels, size), machine.gpus_per_job,
                              int(full.get("iterations", 1)) * passes)
    batch_mb = batch * channels * size ** 2 * 4 / 2**20
    return request(4000 + machine.num_workers * 500 + 4 * batch_mb, seconds, attempt, machine.gpus_per_job,
                   machine.num_workers)


def distill_pool(settings: dict, info, real, device, pool_member_paths):
    """The models a method matches against: a fresh-model pool, the stored members, or None."""
    pool, recipe = settings["pool"], settings["recipe"]
    if pool is not None and pool["generator"] == "fresh":
        return FreshModelPool(lambda: model_from_spec(settings["model"], info), real, settings["finetune"],
                              steps=int(pool["fresh_steps"]), device=device)
    if pool_member_paths:
        return load_pool(pool_member_paths, policy=recipe.get("sampling", "uniform"), size=recipe.get("pool_size"))
    return None


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """inputs.pool (the pool members, if any); outputs.done. Batches an earlier start finished
    under the same settings are skipped; the current one resumes from distill.ckpt beside done."""
    method_name, ipc, shard, seed = settings["method"], settings["ipc"], settings["shard"], settings["seed"]
    recipe = settings["recipe"]
    data = dataset_cfg(settings, machine)
    info = dataset_info(data)
    ranges = recipe_shards(recipe, ipc, info.num_classes, settings["batches_per_shard"])
    if not 0 <= shard < len(ranges):
        raise TeddyError(f"shard {shard} is beyond the set: {method_name} at IPC {ipc} has {len(ranges)} shard(s) "
                         f"(config key distill.batches_per_shard)")
    device = resolve_device(machine.device)
    shard_dir = Path(outputs.done).parent
    checkpoint = shard_dir / "distill.ckpt"
    pool_member_paths = [str(p) for p in getattr(inputs, "pool", [])]
    real = load_split(data, "train")
    writer = ShardWriter(shard_dir, settings, info.mean, info.std, checkpoint)
    method = get_method(recipe["method"])
    batches = ranges[shard]
    todo = [b for b in batches if not writer.done(b)]
    if todo:
        pool = distill_pool(settings, info, real, device, pool_member_paths)
        task = DistillTask(real=real, info=info, pool=pool, ipc=ipc, seed=seed, device=device,
                           recipe={**recipe, **machine.distill_speed.get(method_name, {})},
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
    done = writer.finish(shard, batches, real.class_names)
    remove_checkpoint(checkpoint)
    return done
