# Notebooks render figures from results only (they never run a model); figures carry
# captions into `snakemake --report`.
from circuit_repro.pipeline.resources import resource_functions


rule ioi_baseline_notebook:
    input:
        notebook="notebooks/ioi_baseline.ipynb",
        summaries=expand("results/tasks/{model}/baseline/ioi.json", model=MODELS),
        scores=expand("results/tasks/{model}/baseline/ioi.csv", model=MODELS),
    output:
        notebook="results/notebooks/ioi_baseline.ipynb",
        png=report(
            "results/figures/ioi_baseline/ioi_baseline.png",
            caption="../report/ioi_baseline.rst",
            category="Task baselines",
            labels={"task": "IOI", "figure": "accuracy and logit difference"},
        ),
        pdf="results/figures/ioi_baseline/ioi_baseline.pdf",
    log:
        "logs/notebooks/ioi_baseline.log",
    benchmark:
        "benchmarks/notebooks/ioi_baseline.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "models": MODELS,
            "summary_paths": list(input.summaries),
            "score_paths": list(input.scores),
            "figure_png": output.png,
            "figure_pdf": output.pdf,
        },
    script:
        "../scripts/render_notebook.py"


rule task_baselines_notebook:
    input:
        notebook="notebooks/task_baselines.ipynb",
        tables=expand("results/tasks/{model}/baseline.csv", model=MODELS),
    output:
        notebook="results/notebooks/task_baselines.ipynb",
        png=report(
            "results/figures/task_baselines/task_baselines.png",
            caption="../report/task_baselines.rst",
            category="Task baselines",
            labels={"task": "all tasks", "figure": "accuracy and logit difference"},
        ),
        pdf="results/figures/task_baselines/task_baselines.pdf",
    log:
        "logs/notebooks/task_baselines.log",
    benchmark:
        "benchmarks/notebooks/task_baselines.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "models": MODELS,
            "table_paths": list(input.tables),
            "figure_png": output.png,
            "figure_pdf": output.pdf,
        },
    script:
        "../scripts/render_notebook.py"


rule baseline_summary:
    input:
        tables=expand("results/tasks/{model}/baseline.csv", model=MODELS),
    output:
        summary=report(
            "results/tasks/baseline_summary.html",
            caption="../report/baseline_summary.rst",
            category="Task baselines",
            labels={"task": "all tasks", "figure": "baseline table"},
        ),
    log:
        "logs/tasks/baseline_summary.log",
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary"),
    script:
        "../scripts/baseline_summary.py"


rule claims_table:
    input:
        claims=paper_claims(config),
    output:
        table="results/claims.csv",
        html=report(
            "results/claims.html",
            caption="../report/claims.rst",
            category="0 Claims: paper vs ours",
            labels={"table": "all papers and models"},
        ),
    log:
        "logs/claims_table.log",
    benchmark:
        "benchmarks/claims_table.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary"),
    script:
        "../scripts/claims_table.py"


# The reproduction report: claims first, then every figure with its caption and
# provenance (circuit_repro.pipeline.report). `snakemake --report` still works too.
rule report:
    input:
        claims=MERGED_CLAIMS[0] if paper_claims(config) else [],
        figures=[figure["png"] for figure in REPORT_FIGURES],
        captions=sorted({figure["caption"] for figure in REPORT_FIGURES}),
        models=[prepared_model(model) for model in MODELS],
    output:
        html=REPORT,
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary"),
    params:
        figures=REPORT_FIGURES,
        config=config,
    script:
        "../scripts/report.py"
