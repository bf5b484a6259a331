"""Rule pool_manifest: one CSV row per member of a pool, read from the members' own records."""

from __future__ import annotations

from teddy.machine import Machine
from teddy.pool import load_model, write_manifest
from teddy.resources import request


def settings(cfg: dict, wildcards: dict) -> dict:
    return {"pool_name": str(wildcards["pool"])}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    return request(2000, 0.0, attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> list[dict]:
    rows = [load_model(p, what="pool member")[1] for p in inputs]
    write_manifest(rows, outputs[0])
    return rows
