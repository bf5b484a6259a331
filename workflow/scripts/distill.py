from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    w = snakemake.wildcards
    stages.distill(snakemake.config, w.method, int(w.ipc), int(w.shard), list(snakemake.input.pool),
                   snakemake.params.shard_dir)
