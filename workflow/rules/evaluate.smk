# Stages 4-5: train a fresh student per (method, IPC, architecture, label protocol, seed) on the
# distilled PNG set (meta.json, images/ beside it); top-1 on the real test set. Labels:
# online_kd (the teacher relabels every augmented batch), stored (rule relabel's files), hard.
# With gpus_per_job > 1 (or evaluate.processes) the stage runs itself under torchrun.
rule evaluate:
    input:
        data=DATA,
        distilled=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        teacher=teacher_if_online_kd,
        soft_labels=soft_labels_if_stored,
    output:
        f"{R}/eval/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.json",
    params:
        **stage_params("evaluate"),
    log:
        f"{R}/logs/evaluate/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.tsv"
    threads: threads_for("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/evaluate.py"
