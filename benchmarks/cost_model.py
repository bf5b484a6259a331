"""Does the cost model (teddy.resources) predict how long our jobs take? Its compute seconds and
the runtime each job asks for, beside the time the job measured (Snakemake's benchmark file).

For every benchmark file under RESULTS/benchmarks the job's wildcards are read back from the rule's
`benchmark:` pattern (workflow/rules/*.smk), its settings and resources from its stage with the
config it ran with, and the FLOP rate it reached: the cost model's FLOPs / the measured seconds.
Prints a Markdown table, then the lowest rate of the jobs that ran a minute or more (what
teddy.resources.CPU_FLOPS_PER_S is set from on CPU).

    PYTHONPATH=src .venv/bin/python benchmarks/cost_model.py results/fashion_mnist --config config/config.yaml
"""

from __future__ import annotations

import argparse
import csv
import platform
import re
from pathlib import Path

import yaml

from teddy.config import load_config
from teddy.jobs import eval_cell
from teddy.machine import machine_from_config
from teddy.resources import CPU_FLOPS_PER_S
from teddy.stages import STAGES, stage

RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"


def benchmark_patterns() -> dict[str, re.Pattern]:
    """rule -> a regex of its benchmark file below RESULTS, with the wildcards as named groups."""
    patterns = {}
    for smk in RULES.glob("*.smk"):
        for rule, path in re.findall(r"^rule (\w+):.*?benchmark:\s*\n\s*f\"\{R\}/([^\"]+)\"", smk.read_text(),
                                     flags=re.M | re.S):
            path = path.replace("{EVAL_CELL}", eval_cell("{{method}}", "{{ipc}}", "{{arch}}", "{{protocol}}",
                                                         "{{seed}}"))
            regex = re.escape(path.replace("{{", "\0").replace("}}", "\1"))
            regex = re.sub(r"\x00(\w+)\x01", lambda m: f"(?P<{m.group(1)}>[^/]+)", regex)
            patterns[rule] = re.compile(regex + "$")
    return patterns


def measured_seconds(tsv: Path) -> float:
    with open(tsv) as f:
        return float(next(csv.DictReader(f, delimiter="\t"))["s"])


def rows(results: Path, cfg: dict) -> list[dict]:
    machine = machine_from_config(cfg)
    out = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = str(tsv.relative_to(results))
        for rule, pattern in benchmark_patterns().items():
            match = pattern.match(rel)
            if match and rule in STAGES:
                mod = stage(rule)
                resources = mod.resources(mod.settings(cfg, match.groupdict()), 1, machine)
                seconds = measured_seconds(tsv)
                out.append({"job": rel.removeprefix("benchmarks/").removesuffix(".tsv"), "rule": rule,
                            "predicted_s": resources["seconds"], "asked_min": resources["runtime"],
                            "measured_s": seconds,
                            "flops_per_s": resources["seconds"] * CPU_FLOPS_PER_S / max(seconds, 1e-9)})
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a finished run's results folder (results_dir)")
    parser.add_argument("--config", required=True, help="the config it ran with")
    args = parser.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    cfg["results_dir"] = str(args.results)
    cfg = load_config(cfg)
    table = rows(args.results, cfg)
    print(f"machine: {platform.processor() or platform.machine()}, CPU rate in the model "
          f"{CPU_FLOPS_PER_S:.2e} FLOP/s\n")
    print("| job | predicted compute (s) | asked (min) | measured (s) | asked / measured | FLOP/s reached |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['job']} | {r['predicted_s']:.1f} | {r['asked_min']} | {r['measured_s']:.1f} | "
              f"{60 * r['asked_min'] / max(r['measured_s'], 1e-9):.1f} | {r['flops_per_s']:.2e} |")
    long = [r for r in table if r["measured_s"] >= 60 and r["predicted_s"] > 0]
    if long:
        slowest = min(long, key=lambda r: r["flops_per_s"])
        print(f"\nlowest FLOP rate of the jobs of a minute or more: {slowest['flops_per_s']:.2e} FLOP/s "
              f"({slowest['job']}); under-asked jobs: "
              f"{sum(60 * r['asked_min'] < r['measured_s'] for r in table)} of {len(table)}")


if __name__ == "__main__":
    main()
