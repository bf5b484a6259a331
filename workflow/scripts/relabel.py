from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.relabel(snakemake.config, int(snakemake.wildcards.seed), snakemake.input.distilled,
                   snakemake.input.teacher, snakemake.output[0])
