# Stage 6: the paper's table (method x IPC x student) and every stage's runtime.
EVAL_JSONS = expand(f"{R}/eval/{{method}}/ipc{{ipc}}/{{arch}}/{{labels}}/seed{{seed}}.json",
                    method=METHOD_NAMES, ipc=IPCS, arch=STUDENTS, labels=LABELS, seed=SEEDS)


rule aggregate:
    input:
        evals=EVAL_JSONS,
        manifests=[f"{R}/pool/{p}/manifest.csv" for p in used_pools()],
    output:
        csv=f"{R}/tables/accuracy.csv",
        md=f"{R}/tables/accuracy.md",
        runtime=f"{R}/tables/runtime.csv",
    params:
        benchmarks=f"{R}/benchmarks",
        published=config.get("published_results", "resources/published_results.csv"),
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate/aggregate.tsv"
    threads: 1
    script:
        "../scripts/aggregate.py"
