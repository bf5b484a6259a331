from teddy.runner import stage
from teddy.stages.pool_member import run

with stage(snakemake):
    run(snakemake.params.settings, snakemake.input, snakemake.output, snakemake.params.machine)
