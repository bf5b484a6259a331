# Stage 2: the weak-model pool, one job per member, then a manifest per pool.
# A prior pool with a recipe of its own (required with a pretrained base model) takes its
# snapshots from its own short from-scratch run (rule train_prior), else from the base run.
rule train_prior:
    output:
        metrics=f"{R}/pool/{{pool}}/run/metrics.json",
    params:
        **stage_params("train_prior"),
    log:
        f"{R}/logs/train_prior/{{pool}}.log",
    benchmark:
        f"{R}/benchmarks/train_prior/{{pool}}.tsv"
    threads: job_threads("train_prior", 2)
    resources:
        **stage_resources("train_prior"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/train_prior.py"


rule pool_member:
    input:
        data=DATA,
        model=f"{R}/base/{BASE_ARCH}/model.pt",
        metrics=snapshot_metrics,
    output:
        f"{R}/pool/{{pool}}/members/{{member}}.pt",
    params:
        **stage_params("pool_member"),
    log:
        f"{R}/logs/pool_member/{{pool}}/{{member}}.log",
    benchmark:
        f"{R}/benchmarks/pool_member/{{pool}}/{{member}}.tsv"
    threads: job_threads("pool_member")
    resources:
        **stage_resources("pool_member"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/pool_member.py"


rule pool_manifest:
    input:
        pool_members_of,
    output:
        f"{R}/pool/{{pool}}/manifest.csv",
    params:
        **stage_params("pool_manifest"),
    log:
        f"{R}/logs/pool_manifest/{{pool}}.log",
    benchmark:
        f"{R}/benchmarks/pool_manifest/{{pool}}.tsv"
    threads: 1
    resources:
        **stage_resources("pool_manifest"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/pool_manifest.py"
