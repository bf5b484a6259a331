# Stages 4-5: relabel with the base model (online KD) and train a fresh student per
# (method, IPC, architecture, seed); top-1 on the real test set.
rule evaluate:
    input:
        data=DATA,
        distilled=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        teacher=f"{R}/base/{BASE_ARCH}/model.pt",
        # only when evaluate.labels is stored: the precomputed teacher logits of this seed
        soft_labels=lambda wc: ([f"{R}/distilled/{wc.method}/ipc{wc.ipc}/soft_labels_seed{wc.seed}.pt"]
                                if config["evaluate"].get("labels", "online_kd") == "stored" else []),
    output:
        f"{R}/eval/{{method}}/ipc{{ipc}}/{{arch}}/seed{{seed}}.json",
    params:
        checkpoint=f"{R}/eval/{{method}}/ipc{{ipc}}/{{arch}}/seed{{seed}}.ckpt",
    log:
        f"{R}/logs/evaluate/{{method}}/ipc{{ipc}}/{{arch}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{method}}/ipc{{ipc}}/{{arch}}/seed{{seed}}.tsv"
    threads: threads_for("evaluate")
    resources:
        gpu=GPUS,
    script:
        "../scripts/evaluate.py"
