from pathlib import Path

from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    benchmarks = sorted(Path(snakemake.params.benchmarks).rglob("*.tsv"))
    out = snakemake.output
    stages.aggregate(snakemake.config, list(snakemake.input.evals), list(snakemake.input.ceilings), benchmarks,
                     snakemake.params.published, out.csv, out.md, out.tex, out.html, out.efficiency,
                     dict(zip(snakemake.params.label_protocols, out.plots)))
