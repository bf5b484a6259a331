"""Rule aggregate: the paper tables (CSV long form, Markdown, LaTeX, HTML; a block per (student,
protocol), headed by the protocol, the teacher's and the pool members' test accuracies), the
efficiency table and one accuracy-vs-IPC plot per protocol. Every requested cell must have its result file;
published figures come from the published CSV files among the inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from teddy.efficiency import efficiency_table
from teddy.io import atomic_path, load_json, save_text
from teddy.machine import Machine
from teddy.plots import accuracy_vs_ipc
from teddy.protocols import cells, closest_protocols, config_protocols, protocols_dir
from teddy.published import load_published
from teddy.report import (accuracy_table, ceiling_table, check_cells, collect_results, paper_table, render_html,
                          render_latex, render_markdown, requested_ceiling_cells, requested_cells, run_protocols,
                          with_distill_seconds)
from teddy.resources import request


def settings(cfg: dict, wildcards: dict) -> dict:
    """The cells the tables hold, in the config's shape (teddy.report reads it as a config), and
    what each protocol is (its description and whether a teacher taught it)."""
    ev = cfg["evaluate"]
    ceiling = cfg.get("ceiling")
    protocols = config_protocols(cfg)
    return {"dataset": {"name": cfg["dataset"]["name"]},
            "distill": {"methods": cfg["distill"]["methods"], "ipc": [int(i) for i in cfg["distill"]["ipc"]]},
            "evaluate": {"students": list(ev["students"]), "seeds": [int(s) for s in ev["seeds"]],
                         "cells": [list(c) for c in cells(cfg)]},
            "protocols": {name: {"description": p["description"], "labels": p["labels"]}
                          for name, p in protocols.items()},
            # where a published figure of a protocol we do not run is read (the protocol files say)
            "closest": closest_protocols(protocols_dir(cfg)),
            "ceiling": {"seeds": [int(s) for s in ceiling["seeds"]]} if ceiling else None}


def context(settings: dict, teacher_metrics, manifests, ensemble_metrics=()) -> dict:
    """What the tables say their rows were taught by: each protocol's description, the teacher's
    test accuracy (base model), every pool member's (pool manifests) and those of the other base
    models a protocol's teacher ensemble holds (`ensemble_metrics`: their metrics.json files)."""
    pools = {}
    for path in manifests:
        table = pd.read_csv(path)
        pools[Path(path).parent.name] = dict(zip(table["member"].astype(str), table["test_accuracy"]))
    teacher = load_json(teacher_metrics).get("test_accuracy") if teacher_metrics else None
    ensemble = {Path(p).parent.name: load_json(p).get("test_accuracy") for p in ensemble_metrics}
    return {"protocols": {n: p["description"] for n, p in settings["protocols"].items()},
            "teacher_accuracy": teacher, "pools": pools, **({"ensemble_teachers": ensemble} if ensemble else {})}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    return request(2000, 0.0, attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> pd.DataFrame:
    """inputs.evals, inputs.ceilings, inputs.published (CSV files), inputs.manifests (pools),
    inputs.teacher (the base model's metrics.json, when the DAG trains one, then those of the other
    teachers of an ensemble); outputs.csv, md, tex, html,
    efficiency and plots (one per label protocol, in settings' order). The benchmarks and the
    distillation logs are read from machine.results_dir."""
    dataset = settings["dataset"]["name"]
    results_dir = Path(machine.results_dir)
    requested = requested_cells(settings)
    results = collect_results(list(inputs.evals))
    check_cells(results, requested)
    results = results.merge(requested, on=list(requested.columns))  # only what this config asks for
    measured = with_distill_seconds(accuracy_table(results), results_dir / "distilled")
    ceilings = None
    wanted_ceilings = requested_ceiling_cells(settings)
    if not wanted_ceilings.empty:
        found = collect_results(list(inputs.ceilings), what="ceiling result")
        check_cells(found, wanted_ceilings, what="ceiling")
        ceilings = ceiling_table(found.merge(wanted_ceilings, on=list(wanted_ceilings.columns)))
    files = list(getattr(inputs, "published", []))
    published = pd.concat([load_published(p, dataset) for p in files], ignore_index=True) if files else None
    kd = [n for n, p in settings["protocols"].items() if p["labels"] == "kd"]
    table = paper_table(measured, ceilings, published, method_order=list(settings["distill"]["methods"]),
                        protocol_order=run_protocols(settings), kd_protocols=kd, closest=settings["closest"])
    teacher = list(getattr(inputs, "teacher", None) or [])
    about = context(settings, teacher[0] if teacher else None, list(getattr(inputs, "manifests", None) or []),
                    teacher[1:])
    benchmarks = sorted((results_dir / "benchmarks").rglob("*.tsv"))
    efficiency = efficiency_table(benchmarks, settings["distill"]["methods"])
    with atomic_path(outputs.csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(outputs.efficiency) as tmp:
        efficiency.to_csv(tmp, index=False)
    save_text(render_markdown(dataset, table, efficiency, about), outputs.md)
    save_text(render_latex(dataset, table, about), outputs.tex)
    save_text(render_html(dataset, table, efficiency, about), outputs.html)
    for protocol, png in zip(run_protocols(settings), outputs.plots):
        accuracy_vs_ipc(table, protocol, png, dataset)
    return table
