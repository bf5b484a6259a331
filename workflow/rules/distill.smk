# Stage 3: one distillation job per (method, IPC); the set is an ImageFolder of PNGs plus
# meta.json (teddy.distilled_set).
rule distill:
    input:
        data=DATA,
        pool=distill_pool_inputs,
    output:
        images=directory(f"{R}/distilled/{{method}}/ipc{{ipc}}/images"),
        meta=f"{R}/distilled/{{method}}/ipc{{ipc}}/meta.json",
        grid=report(f"{R}/distilled/{{method}}/ipc{{ipc}}/grid.png", caption="../report/grid.rst",
                    category="Distilled images", subcategory="{method}", labels={"method": "{method}", "IPC": "{ipc}"}),
        log_json=f"{R}/distilled/{{method}}/ipc{{ipc}}/log.json",
    params:
        checkpoint=f"{R}/distilled/{{method}}/ipc{{ipc}}/distill.ckpt",
    log:
        f"{R}/logs/distill/{{method}}/ipc{{ipc}}.log",
    benchmark:
        f"{R}/benchmarks/distill/{{method}}/ipc{{ipc}}.tsv"
    threads: threads_for("distill")
    resources:
        **job_resources("distill"),
    script:
        "../scripts/distill.py"
