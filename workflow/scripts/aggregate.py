from pathlib import Path

from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    benchmarks = sorted(Path(snakemake.params.benchmarks).rglob("*.tsv"))
    stages.aggregate(snakemake.config, list(snakemake.input.evals), benchmarks, snakemake.output.csv,
                     snakemake.output.md, snakemake.output.runtime, snakemake.params.published)
