# Stage 4 (stored form): the teacher's logits on every augmented batch of every epoch of one
# student seed's run, written once so that evaluate never loads the teacher
# (evaluate.labels: stored). The plan depends on the seed, not on the student architecture.
rule relabel:
    input:
        distilled=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        teacher=f"{R}/base/{BASE_ARCH}/model.pt",
    output:
        f"{R}/distilled/{{method}}/ipc{{ipc}}/soft_labels_seed{{seed}}.pt",
    log:
        f"{R}/logs/relabel/{{method}}/ipc{{ipc}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/relabel/{{method}}/ipc{{ipc}}/seed{{seed}}.tsv"
    threads: threads_for("relabel")
    resources:
        gpu=GPUS,
    script:
        "../scripts/relabel.py"
