"""Rule normalisation (class-folder datasets): mean/std of the training split and a check of
every image, cached as JSON; every stage that normalises images reads it."""

from __future__ import annotations

from teddy.image_folder import compute_normalisation
from teddy.io import save_json
from teddy.machine import Machine, dataset_cfg, dataset_settings
from teddy.resources import request


def settings(cfg: dict, wildcards: dict) -> dict:
    return {"dataset": dataset_settings(cfg)}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    return request(2000, 0.0, attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> dict:
    stats = compute_normalisation(dataset_cfg(settings, machine))
    save_json(stats, outputs[0])
    return stats
