from teddy.runner import stage
from teddy.stages.normalisation import run

with stage(snakemake):
    run(snakemake.params.settings, snakemake.input, snakemake.output, snakemake.params.machine)
