from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.train_base(snakemake.config, snakemake.output.model, snakemake.output.metrics,
                      snakemake.params.snapshots, snakemake.params.checkpoint)
