from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    w = snakemake.wildcards
    stages.evaluate(snakemake.config, w.method, int(w.ipc), w.arch, int(w.seed), snakemake.input.distilled,
                    snakemake.input.teacher, snakemake.output[0], snakemake.params.checkpoint,
                    soft_labels_path=(list(snakemake.input.soft_labels) or [None])[0])
