"""Rule pool_member: one member of a weak-model pool (a base-training snapshot, the base model
pruned and fine-tuned, or the base model itself)."""

from __future__ import annotations

from pathlib import Path

from teddy.datasets import dataset_info, load_split
from teddy.errors import TeddyError
from teddy.io import load_json
from teddy.machine import Machine, dataset_cfg, dataset_settings, resolve_device
from teddy.models import arch_spec
from teddy.pool import choose_snapshot, finetune_recipe, load_model, manifest_row, prune_channels, save_model
from teddy.recipes import trained_epochs
from teddy.resources import train_images, training_request
from teddy.resume import remove_checkpoint
from teddy.train import evaluate_accuracy, fit, near_chance_warning, recalibrate_bn


def settings(cfg: dict, wildcards: dict) -> dict:
    pool = wildcards["pool"]
    return {"dataset": dataset_settings(cfg), "base": cfg["base"], "model": arch_spec(cfg, cfg["base"]["arch"]),
            "pool": cfg["pools"][pool], "pool_name": pool, "member": str(wildcards["member"])}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    # a snapshot copy or one fine-tuning epoch
    return training_request(settings, machine, 1, train_images(settings, machine), settings["model"], attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    """inputs.model (the base model), inputs.metrics (its snapshots); outputs[0] the member."""
    pool_cfg, pool_name, member = settings["pool"], settings["pool_name"], settings["member"]
    generator = pool_cfg["generator"]
    out_path = Path(outputs[0])
    checkpoint = out_path.with_suffix(".ckpt")
    data = dataset_cfg(settings, machine)
    info = dataset_info(data)
    device = resolve_device(machine.device)
    test_set = load_split(data, "test")
    finetune_epochs = 0
    if generator == "single":
        model, _ = load_model(inputs.model, what="base model")
        made_from = "base model"
    elif generator == "prior":
        snapshots = load_json(inputs.metrics)["snapshots"]
        epoch = choose_snapshot(member, {int(e): s["val_accuracy"] for e, s in snapshots.items()})
        model, _ = load_model(snapshots[str(epoch)]["path"], what="base-training snapshot")
        made_from = f"epoch {epoch}"
    elif generator == "post":
        # prune the trained base model, fine-tune briefly on real data, then re-estimate BN statistics
        ratio = float(member.removeprefix("prune"))
        model, _ = load_model(inputs.model, what="base model")
        model = prune_channels(model, ratio, (info.channels, info.image_size, info.image_size), info.num_classes)
        train_set = load_split(data, "train")
        recipe = finetune_recipe(pool_cfg, settings["base"]["recipe"])
        seed = int(settings["base"]["seed"])
        fit(model, train_set, recipe, device, seed=seed, checkpoint_path=checkpoint,
                    desc=f"fine-tune {pool_name}/{member}", info=info)
        recalibrate_bn(model, train_set, device, batches_to_use=int(pool_cfg["recalibrate_batches"]),
                       batch_size=int(recipe["batch_size"]), seed=seed)
        made_from = f"base pruned at ratio {ratio:g}"
        finetune_epochs = trained_epochs(recipe)
    else:
        raise TeddyError(f"pool generator '{generator}' has no members on disk (pools.{pool_name}.generator)")
    model.to(device)
    acc = evaluate_accuracy(model, test_set, device)
    near_chance_warning(acc, info.num_classes, f"pool '{pool_name}' member {member} ({made_from})",
                        {"prior": f"pools.{pool_name}.epochs, or the recipe its snapshots come from "
                                  f"(pools.{pool_name}.recipe, else base.recipe.epochs)",
                         "post": f"pools.{pool_name}.post (the fine-tuning recipe)"}.get(generator, "base.recipe.epochs"))
    row = manifest_row(member, generator, made_from, finetune_epochs, acc, model,
                       (info.channels, info.image_size, info.image_size))
    save_model(out_path, model, row)
    remove_checkpoint(checkpoint)
    return row
