from teddy import stages
from teddy.runner import stage

with stage(snakemake):
    w = snakemake.wildcards
    stages.evaluate(snakemake.config, w.method, int(w.ipc), w.arch, int(w.seed), w.labels, snakemake.input.distilled,
                    (list(snakemake.input.teacher) or [None])[0], snakemake.output[0], snakemake.params.checkpoint,
                    label_store_meta=(list(snakemake.input.soft_labels) or [None])[0])
