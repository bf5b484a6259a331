# Stage 0 (class-folder datasets only): per-channel mean/std of the training split and a check
# that every image opens, computed once and cached; every stage that normalises images reads it.
rule normalisation:
    output:
        NORMALISATION_FILE,
    params:
        **stage_params("normalisation"),
    log:
        f"{R}/logs/normalisation.log",
    benchmark:
        f"{R}/benchmarks/normalisation/normalisation.tsv"
    threads: 1
    resources:
        **stage_resources("normalisation"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/normalisation.py"
