from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.train_prior(snakemake.config, snakemake.wildcards.pool, snakemake.output.metrics,
                       snakemake.params.snapshots, snakemake.params.checkpoint)
