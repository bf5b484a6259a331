"""One function per workflow stage. Stage scripts in workflow/scripts/ only unpack Snakemake's
inputs and outputs and call these; everything here takes plain config values and paths."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pandas as pd
from torchvision.utils import save_image

from teddy.data import TensorImageDataset, dataset_info, denormalise, load_split
from teddy.errors import TeddyError
from teddy.io import atomic_path, load_distilled, load_json, save_distilled, save_json, save_text
from teddy.methods import DistillTask, get_method
from teddy.models import model_from_spec
from teddy.pool import choose_snapshot, load_model, load_pool, manifest_row, save_model, write_manifest
from teddy.report import accuracy_table, collect_results, published_rows, render_markdown, runtime_table
from teddy.train import evaluate_accuracy, remove_checkpoint, resolve_device, train_model


def arch_spec(cfg: dict, arch: str) -> dict:
    return {"arch": arch, **(cfg.get("arch_options") or {}).get(arch, {})}


def build(cfg: dict, arch: str):
    return model_from_spec(arch_spec(cfg, arch), dataset_info(cfg["dataset"]["name"]))


# 1. base model ------------------------------------------------------------------------------

def train_base(cfg: dict, model_out, metrics_out, snapshot_dir, checkpoint=None) -> dict:
    base = cfg["base"]
    device = resolve_device(cfg.get("device", "auto"))
    train_set, val_set = load_split(cfg["dataset"], "train"), load_split(cfg["dataset"], "val")
    test_set = load_split(cfg["dataset"], "test")
    model = build(cfg, base["arch"])
    recipe = {"eval_every": 1, **base["recipe"]}
    wanted = set(base.get("snapshot_epochs") or range(1, int(recipe["epochs"]) + 1))
    snapshot_dir = Path(snapshot_dir)

    def keep_snapshot(epoch, model, metrics):
        if epoch in wanted:
            save_model(snapshot_dir / f"epoch{epoch}.pt", copy.deepcopy(model),
                       {"epoch": epoch, "val_accuracy": metrics.get("eval_accuracy")})

    t0 = time.perf_counter()
    history = train_model(model, train_set, recipe, device, seed=int(base.get("seed", 0)), eval_set=val_set,
                          on_epoch_end=keep_snapshot, checkpoint_path=checkpoint, desc=f"base {base['arch']}")
    test_acc = evaluate_accuracy(model, test_set, device)
    metrics = {"arch": base["arch"], "test_accuracy": test_acc, "history": history,
               "train_seconds": time.perf_counter() - t0,
               "snapshots": {str(h["epoch"]): {"path": str(snapshot_dir / f"epoch{h['epoch']}.pt"),
                                               "val_accuracy": h["eval_accuracy"]}
                             for h in history if h["epoch"] in wanted}}
    save_model(model_out, model, {"arch": base["arch"], "test_accuracy": test_acc})
    save_json(metrics, metrics_out)  # written last: the pool rules depend on it
    remove_checkpoint(checkpoint)
    return metrics


# 2. weak-model pool -------------------------------------------------------------------------

def pool_member(cfg: dict, pool_name: str, member: str, base_model, base_metrics, out_path, checkpoint=None) -> dict:
    pool_cfg = cfg["pools"][pool_name]
    generator = pool_cfg["generator"]
    info = dataset_info(cfg["dataset"]["name"])
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
    else:
        raise TeddyError(f"pool generator '{generator}' is not implemented yet (pools.{pool_name}.generator)")
    model.to(device)
    acc = evaluate_accuracy(model, test_set, device)
    row = manifest_row(member, generator, made_from, finetune_epochs, acc, model,
                       (info.channels, info.image_size, info.image_size))
    save_model(out_path, model, row)
    return row


def pool_manifest(member_paths, out_csv) -> list[dict]:
    rows = [load_model(p, what="pool member")[1] for p in member_paths]
    write_manifest(rows, out_csv)
    return rows


# 3. distillation ----------------------------------------------------------------------------

def distill(cfg: dict, method_name: str, ipc: int, pool_member_paths, data_out, grid_out, log_out,
            checkpoint=None) -> dict:
    recipe = cfg["distill"]["methods"][method_name]
    info = dataset_info(cfg["dataset"]["name"])
    device = resolve_device(cfg.get("device", "auto"))
    seed = int(cfg["distill"].get("seed", 0))
    real = load_split(cfg["dataset"], "train")
    pool = None
    if pool_member_paths:
        pool = load_pool(pool_member_paths, policy=recipe.get("sampling", "uniform"), size=recipe.get("pool_size"))
    task = DistillTask(real=real, info=info, pool=pool, ipc=int(ipc), recipe=recipe, seed=seed, device=device,
                       checkpoint_path=checkpoint)
    t0 = time.perf_counter()
    result = get_method(recipe["method"])(task)
    seconds = time.perf_counter() - t0
    save_distilled(data_out, result.images, result.labels, info.mean, info.std, real.class_names,
                   config={"method_name": method_name, "ipc": int(ipc), "recipe": recipe, "dataset": cfg["dataset"],
                           "pool": [str(p) for p in pool_member_paths]})
    with atomic_path(grid_out) as tmp:
        save_image(denormalise(result.images, info), tmp, nrow=int(ipc) if ipc > 1 else info.num_classes,
                   format="png")
    log = {"method": method_name, "ipc": int(ipc), "seconds": seconds, **result.log}
    save_json(log, log_out)
    remove_checkpoint(checkpoint)
    return log


# 4-5. relabel and evaluate ------------------------------------------------------------------

def evaluate(cfg: dict, method_name: str, ipc: int, arch: str, seed: int, distilled_path, teacher_path,
             out_json, checkpoint=None) -> dict:
    ev = cfg["evaluate"]
    device = resolve_device(cfg.get("device", "auto"))
    distilled = load_distilled(distilled_path)
    train_set = TensorImageDataset(distilled["images"], distilled["labels"], distilled["class_names"])
    labels = ev.get("labels", "online_kd")
    if labels == "online_kd":
        teacher, _ = load_model(teacher_path, what="teacher (base model)")
    elif labels == "hard":
        teacher = None
    else:
        raise TeddyError(f"unknown evaluate.labels '{labels}' (online_kd or hard)")
    recipe = dict(ev["recipe"])
    recipe["batch_size"] = min(int(recipe["batch_size"]), len(train_set))
    student = build(cfg, arch)
    t0 = time.perf_counter()
    train_model(student, train_set, recipe, device, seed=int(seed), teacher=teacher, checkpoint_path=checkpoint,
                desc=f"student {arch} {method_name} ipc{ipc} seed{seed}")
    acc = evaluate_accuracy(student, load_split(cfg["dataset"], "test"), device)
    result = {"method": method_name, "ipc": int(ipc), "arch": arch, "seed": int(seed), "labels": labels,
              "test_accuracy": acc, "train_seconds": time.perf_counter() - t0}
    save_json(result, out_json)
    remove_checkpoint(checkpoint)
    return result


# 6. aggregate -------------------------------------------------------------------------------

def aggregate(cfg: dict, eval_jsons, benchmark_files, table_csv, table_md, runtime_csv, published_csv=None):
    table = accuracy_table(collect_results(eval_jsons))
    runtimes = runtime_table(benchmark_files)
    published = published_rows(published_csv, cfg["dataset"]["name"]) if published_csv else pd.DataFrame()
    with atomic_path(table_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(runtime_csv) as tmp:
        runtimes.to_csv(tmp, index=False)
    save_text(render_markdown(cfg["dataset"]["name"], table, runtimes, published), table_md)
    return table
