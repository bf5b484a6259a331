from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.pool_manifest(list(snakemake.input), snakemake.output[0])
