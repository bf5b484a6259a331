"""Rule aggregate: the paper tables (CSV long form, Markdown, LaTeX, HTML), the efficiency table
and one accuracy-vs-IPC plot per label protocol. Every requested cell must have its result file;
published figures come from the published CSV files among the inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from teddy.efficiency import efficiency_table
from teddy.io import atomic_path, save_text
from teddy.plots import accuracy_vs_ipc
from teddy.published import load_published
from teddy.report import (accuracy_table, ceiling_table, check_cells, collect_results, label_protocols, paper_table,
                          render_html, render_latex, render_markdown, requested_ceiling_cells, requested_cells,
                          with_distill_seconds)
from teddy.stages.common import Machine, request


def settings(cfg: dict, wildcards: dict) -> dict:
    """The cells the tables hold, in the config's shape (teddy.report reads it as a config)."""
    ev = cfg["evaluate"]
    ceiling = cfg.get("ceiling")
    return {"dataset": {"name": cfg["dataset"]["name"]},
            "distill": {"methods": cfg["distill"]["methods"], "ipc": [int(i) for i in cfg["distill"]["ipc"]]},
            "evaluate": {"students": list(ev["students"]), "seeds": [int(s) for s in ev["seeds"]],
                         "labels": label_protocols(cfg)},
            "ceiling": {"seeds": [int(s) for s in ceiling["seeds"]]} if ceiling else None}


def resources(settings: dict, attempt: int, machine: Machine = Machine()) -> dict:
    return request(2000, 0.0, attempt)


def run(settings: dict, inputs, outputs, machine: Machine) -> pd.DataFrame:
    """inputs.evals, inputs.ceilings, inputs.published (CSV files); outputs.csv, md, tex, html,
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
    table = paper_table(measured, ceilings, published, method_order=list(settings["distill"]["methods"]))
    benchmarks = sorted((results_dir / "benchmarks").rglob("*.tsv"))
    efficiency = efficiency_table(benchmarks, settings["distill"]["methods"])
    with atomic_path(outputs.csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(outputs.efficiency) as tmp:
        efficiency.to_csv(tmp, index=False)
    save_text(render_markdown(dataset, table, efficiency), outputs.md)
    save_text(render_latex(dataset, table), outputs.tex)
    save_text(render_html(dataset, table, efficiency), outputs.html)
    for labels, png in zip(label_protocols(settings), outputs.plots):
        accuracy_vs_ipc(table, labels, png, dataset)
    return table
