from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.distill(snakemake.config, snakemake.wildcards.method, int(snakemake.wildcards.ipc),
                   list(snakemake.input.pool), snakemake.output.meta, snakemake.output.grid,
                   snakemake.output.log_json, snakemake.params.checkpoint)
