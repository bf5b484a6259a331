# Stages 4-5: train a fresh student per (method, IPC, architecture, label protocol, seed) on the
# distilled PNG set (meta.json, images/ beside it); top-1 on the real test set. Labels:
# online_kd (the teacher relabels every augmented batch), stored (rule relabel's files), hard.
# With gpus_per_job > 1 (or evaluate.processes) the stage runs itself under torchrun.
rule evaluate:
    input:
        data=DATA,
        distilled=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        teacher=lambda wc: [f"{R}/base/{BASE_ARCH}/model.pt"] if wc.labels == "online_kd" else [],
        soft_labels=lambda wc: ([f"{R}/distilled/{wc.method}/ipc{wc.ipc}/soft_labels/seed{wc.seed}/meta.json"]
                                if wc.labels == "stored" else []),
    output:
        f"{R}/eval/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.json",
    params:
        checkpoint=f"{R}/eval/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.ckpt",
        settings=settings_of("evaluate"),
    log:
        f"{R}/logs/evaluate/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.tsv"
    threads: threads_for("evaluate")
    resources:
        **job_resources("evaluate"),
    script:
        "../scripts/evaluate.py"
