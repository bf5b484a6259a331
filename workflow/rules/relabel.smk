# Stage 4 (stored form): the teacher's top-k logits on every augmented batch of every epoch of
# one student seed's run under a kd protocol, one file per epoch beside meta.json (written last),
# so that evaluate never loads the teacher (evaluate.teacher_outputs: stored). The plan depends
# on the protocol's recipe and the seed, not on the student.
rule relabel:
    input:
        data=DATA,
        distilled=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        teacher=teacher_models,
    output:
        f"{R}/distilled/{{method}}/ipc{{ipc}}/soft_labels/{{protocol}}/seed{{seed}}/meta.json",
    params:
        **stage_params("relabel"),
    log:
        f"{R}/logs/relabel/{{method}}/ipc{{ipc}}/{{protocol}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/relabel/{{method}}/ipc{{ipc}}/{{protocol}}/seed{{seed}}.tsv"
    threads: job_threads("relabel")
    resources:
        **stage_resources("relabel"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/relabel.py"
