# Stage 5b: the ceiling row of each (student, protocol) block: the protocol's student and recipe
# on the whole real training set (hard labels, or online KD from the base model for a kd
# protocol; ceiling.epochs may shorten it). Off when the config has no `ceiling:` section.
rule ceiling:
    input:
        data=DATA,
        teacher=teacher_if_kd,
    output:
        f"{R}/ceiling/{{arch}}/{{protocol}}/seed{{seed}}.json",
    params:
        **stage_params("ceiling"),
    log:
        f"{R}/logs/ceiling/{{arch}}/{{protocol}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/ceiling/{{arch}}/{{protocol}}/seed{{seed}}.tsv"
    threads: job_threads("ceiling")
    resources:
        **stage_resources("ceiling"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/ceiling.py"
