# Notebooks render figures from results only (they never run a model); figures carry
# captions into `snakemake --report`.


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
