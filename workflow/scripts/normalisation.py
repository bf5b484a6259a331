from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.normalisation(snakemake.config, snakemake.output[0])
