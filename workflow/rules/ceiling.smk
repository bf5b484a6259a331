# Stage 5b: the ceiling row of each (student, label protocol) block: the student trained on the
# whole real training set with `ceiling.recipe` (hard labels, or online KD from the base model,
# which also stands for stored soft labels). Off when the config has no `ceiling:` section.
rule ceiling:
    input:
        data=DATA,
        teacher=teacher_if_online_kd,
    output:
        f"{R}/ceiling/{{arch}}/{{labels}}/seed{{seed}}.json",
    params:
        **stage_params("ceiling"),
    wildcard_constraints:
        labels="hard|online_kd",
    log:
        f"{R}/logs/ceiling/{{arch}}/{{labels}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/ceiling/{{arch}}/{{labels}}/seed{{seed}}.tsv"
    threads: threads_for("ceiling")
    resources:
        **stage_resources("ceiling"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/ceiling.py"
