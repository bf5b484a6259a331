from teddy.runner import stage
from teddy.stages.normalisation import run

with stage(snakemake) as machine:  # the Machine, its workers fitted to the CPUs the job was given
    run(snakemake.params.settings, snakemake.input, snakemake.output, machine)
