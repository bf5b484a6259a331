# Stage 0 (class-folder datasets only): per-channel mean/std of the training split and a check
# that every image opens, computed once and cached; every stage that normalises images reads it.
rule normalisation:
    output:
        NORMALISATION_FILE,
    params:
        settings=settings_of("normalisation"),
    log:
        f"{R}/logs/normalisation.log",
    benchmark:
        f"{R}/benchmarks/normalisation/normalisation.tsv"
    threads: 1
    script:
        "../scripts/normalisation.py"
