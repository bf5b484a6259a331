# Stage 4 (stored form): the teacher's top-k logits on every augmented batch of every epoch of
# one student seed's run, one file per epoch beside meta.json (written last), so that evaluate
# never loads the teacher (labels: stored). The plan depends on the seed, not on the student.
rule relabel:
    input:
        data=DATA,
        distilled=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        teacher=f"{R}/base/{BASE_ARCH}/model.pt",
    output:
        f"{R}/distilled/{{method}}/ipc{{ipc}}/soft_labels/seed{{seed}}/meta.json",
    params:
        **stage_params("relabel"),
    log:
        f"{R}/logs/relabel/{{method}}/ipc{{ipc}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/relabel/{{method}}/ipc{{ipc}}/seed{{seed}}.tsv"
    threads: threads_for("relabel")
    resources:
        **stage_resources("relabel"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/relabel.py"
