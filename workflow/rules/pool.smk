# Stage 2: the weak-model pool, one job per member, then a manifest per pool.
rule pool_member:
    input:
        data=DATA,
        model=f"{R}/base/{BASE_ARCH}/model.pt",
        metrics=f"{R}/base/{BASE_ARCH}/metrics.json",
    output:
        f"{R}/pool/{{pool}}/members/{{member}}.pt",
    params:
        checkpoint=f"{R}/pool/{{pool}}/members/{{member}}.ckpt",
    log:
        f"{R}/logs/pool_member/{{pool}}/{{member}}.log",
    benchmark:
        f"{R}/benchmarks/pool_member/{{pool}}/{{member}}.tsv"
    threads: threads_for("pool_member")
    resources:
        **job_resources("pool_member"),
    script:
        "../scripts/pool_member.py"


rule pool_manifest:
    input:
        lambda wc: pool_members(wc.pool),
    output:
        f"{R}/pool/{{pool}}/manifest.csv",
    log:
        f"{R}/logs/pool_manifest/{{pool}}.log",
    benchmark:
        f"{R}/benchmarks/pool_manifest/{{pool}}.tsv"
    threads: 1
    script:
        "../scripts/pool_manifest.py"
