# Stage 1: the base ("squeeze") model on the real training set; keeps per-epoch snapshots
# beside it (side files listed in metrics.json, under snapshots/) for the prior pool.
rule train_base:
    input:
        data=DATA,
    output:
        model=f"{R}/base/{{arch}}/model.pt",
        metrics=f"{R}/base/{{arch}}/metrics.json",
    params:
        **stage_params("train_base"),
    log:
        f"{R}/logs/train_base/{{arch}}.log",
    benchmark:
        f"{R}/benchmarks/train_base/{{arch}}.tsv"
    threads: job_threads("train_base", 2)
    resources:
        **stage_resources("train_base"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/train_base.py"
