from pathlib import Path

from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    w = snakemake.wildcards
    stages.gather(snakemake.config, w.method, int(w.ipc), [Path(p).parent for p in snakemake.input.shards],
                  snakemake.output.meta, snakemake.output.grid, snakemake.output.log_json)
