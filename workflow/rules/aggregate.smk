# Stage 6: the paper's tables (a block per student and evaluation protocol: ceiling first, then
# ours, then published rows of the same protocol; the others listed apart), the efficiency table and accuracy-vs-IPC plots, all marked for
# `snakemake --report report.html` (captions in workflow/report/).
rule aggregate:
    input:
        evals=EVAL_JSONS,
        ceilings=CEILING_JSONS,
        manifests=MANIFESTS,
        teacher=BASE_METRICS,
        published=PUBLISHED_FILES,
    output:
        csv=report(f"{R}/tables/accuracy.csv", caption="../report/accuracy_csv.rst", category="Tables"),
        md=f"{R}/tables/accuracy.md",
        tex=f"{R}/tables/accuracy.tex",
        html=report(f"{R}/tables/accuracy.html", caption="../report/accuracy_table.rst", category="Tables"),
        efficiency=report(f"{R}/tables/efficiency.csv", caption="../report/efficiency.rst", category="Tables"),
        plots=[report(f"{R}/plots/accuracy_vs_ipc_{protocol}.png", caption="../report/accuracy_plot.rst",
                      category="Plots", labels={"plot": "accuracy vs IPC", "protocol": protocol})
               for protocol in PROTOCOLS],
    params:
        **stage_params("aggregate"),
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate/aggregate.tsv"
    threads: 1
    resources:
        **stage_resources("aggregate"),
    conda:
        "../envs/teddy.yaml"
    script:
        "../scripts/aggregate.py"
