# Stage 2: the weak-model pool, one job per member, then a manifest per pool.
# A prior pool with a recipe of its own (required with a pretrained base model) takes its
# snapshots from its own short from-scratch run (rule train_prior), else from the base run.
def snapshot_metrics(wildcards):
    if config["pools"][wildcards.pool].get("recipe"):
        return f"{R}/pool/{wildcards.pool}/run/metrics.json"
    return f"{R}/base/{BASE_ARCH}/metrics.json"


rule train_prior:
    output:
        metrics=f"{R}/pool/{{pool}}/run/metrics.json",
    params:
        snapshots=f"{R}/pool/{{pool}}/run/snapshots",
        checkpoint=f"{R}/pool/{{pool}}/run/train.ckpt",
        settings=settings_of("train_prior"),
    log:
        f"{R}/logs/train_prior/{{pool}}.log",
    benchmark:
        f"{R}/benchmarks/train_prior/{{pool}}.tsv"
    threads: threads_for("train_prior", 2)
    resources:
        **job_resources("train_prior", 2),
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
        checkpoint=f"{R}/pool/{{pool}}/members/{{member}}.ckpt",
        settings=settings_of("pool_member"),
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
