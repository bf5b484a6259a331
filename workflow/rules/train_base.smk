# Stage 1: the base ("squeeze") model on the real training set; keeps per-epoch snapshots
# beside it (side files listed in metrics.json) for the prior pool.
rule train_base:
    input:
        data=DATA,
    output:
        model=f"{R}/base/{{arch}}/model.pt",
        metrics=f"{R}/base/{{arch}}/metrics.json",
    params:
        snapshots=f"{R}/base/{{arch}}/snapshots",
        checkpoint=f"{R}/base/{{arch}}/train.ckpt",
        settings=settings_of("train_base"),
    log:
        f"{R}/logs/train_base/{{arch}}.log",
    benchmark:
        f"{R}/benchmarks/train_base/{{arch}}.tsv"
    threads: threads_for("train_base", 2)
    resources:
        **job_resources("train_base", 2),
    script:
        "../scripts/train_base.py"
