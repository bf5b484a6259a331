from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    stages.ceiling(snakemake.config, snakemake.wildcards.arch, snakemake.wildcards.labels, int(snakemake.wildcards.seed),
                   snakemake.input.teacher[0] if snakemake.input.teacher else None, snakemake.output[0],
                   checkpoint=snakemake.params.checkpoint)
