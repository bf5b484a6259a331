# Stage 5b: the ceiling row of each (student, label protocol) block: the student trained on the
# whole real training set with `ceiling.recipe` (hard labels, or online KD from the base model,
# which also stands for stored soft labels). Off when the config has no `ceiling:` section.
from teddy.report import ceiling_protocols

CEILING_SEEDS = [int(s) for s in (config.get("ceiling") or {}).get("seeds", [0])]
CEILING_JSONS = expand(f"{R}/ceiling/{{arch}}/{{labels}}/seed{{seed}}.json", arch=STUDENTS,
                       labels=ceiling_protocols(config), seed=CEILING_SEEDS)


rule ceiling:
    input:
        data=DATA,
        teacher=lambda wc: [f"{R}/base/{BASE_ARCH}/model.pt"] if wc.labels == "online_kd" else [],
    output:
        f"{R}/ceiling/{{arch}}/{{labels}}/seed{{seed}}.json",
    params:
        checkpoint=f"{R}/ceiling/{{arch}}/{{labels}}/seed{{seed}}.ckpt",
        settings=settings_of("ceiling"),
    wildcard_constraints:
        labels="hard|online_kd",
    log:
        f"{R}/logs/ceiling/{{arch}}/{{labels}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/ceiling/{{arch}}/{{labels}}/seed{{seed}}.tsv"
    threads: threads_for("ceiling")
    resources:
        **job_resources("ceiling"),
    script:
        "../scripts/ceiling.py"
