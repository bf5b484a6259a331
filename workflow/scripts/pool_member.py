from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.pool_member(snakemake.config, snakemake.wildcards.pool, snakemake.wildcards.member,
                       snakemake.input.model, snakemake.input.metrics, snakemake.output[0],
                       snakemake.params.checkpoint)
