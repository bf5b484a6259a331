# Stage 3: one distillation job per (method, IPC, shard), a shard being a range of synthetic
# batches (distill.batches_per_shard; teddy.shards), then one gather per (method, IPC) that checks
# the shards and assembles the set: an ImageFolder of PNGs plus meta.json (teddy.distilled_set).
rule distill:
    input:
        data=DATA,
        pool=distill_pool_inputs,
    output:
        # the shard's PNGs, batch markers and checkpoint stay beside done.json, undeclared, so a
        # rerun of an interrupted shard keeps the batches it finished
        done=f"{R}/distilled/{{method}}/ipc{{ipc}}/shards/{{shard}}/done.json",
    params:
        **stage_params("distill"),
    log:
        f"{R}/logs/distill/{{method}}/ipc{{ipc}}/shard{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/distill/{{method}}/ipc{{ipc}}/shard{{shard}}.tsv"
    threads: job_threads("distill")
    resources:
        **stage_resources("distill"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/distill.py"


rule gather:
    input:
        data=DATA,
        shards=shard_done_files,
    output:
        images=directory(f"{R}/distilled/{{method}}/ipc{{ipc}}/images"),
        meta=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        grid=report(f"{R}/distilled/{{method}}/ipc{{ipc}}/grid.png", caption="../report/grid.rst",
                    category="Distilled images", subcategory="{method}", labels={"method": "{method}", "IPC": "{ipc}"}),
        log_json=f"{R}/distilled/{{method}}/ipc{{ipc}}/log.json",
    params:
        **stage_params("gather"),
    log:
        f"{R}/logs/gather/{{method}}/ipc{{ipc}}.log",
    benchmark:
        f"{R}/benchmarks/gather/{{method}}/ipc{{ipc}}.tsv"
    threads: 1
    resources:
        **stage_resources("gather"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/gather.py"
