# Stages 4-5: train a fresh student per (method, IPC, architecture, protocol, seed) on the
# distilled PNG set (meta.json, images/ beside it); top-1 on the real test set. The protocol
# (config/protocols/) is the student's whole recipe; a kd protocol's teacher outputs are online
# (the teacher relabels every augmented batch) or stored (rule relabel's files).
# With gpus_per_job > 1 (or evaluate.processes) the stage runs itself under torchrun.
EVAL_CELL = eval_cell("{method}", "{ipc}", "{arch}", "{protocol}", "{seed}")

rule evaluate:
    input:
        data=DATA,
        distilled=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        teacher=teacher_if_kd,
        soft_labels=soft_labels_if_stored,
    output:
        eval_result_path(R, "{method}", "{ipc}", "{arch}", "{protocol}", "{seed}"),
    params:
        **stage_params("evaluate"),
    log:
        f"{R}/logs/evaluate/{EVAL_CELL}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{EVAL_CELL}.tsv"
    threads: job_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/evaluate.py"
