# P7. Recall vs reasoning circuits and their double dissociation (Fartale et al. 2025).
# Each family's circuit located by patching at layer, head and neuron level, ablated
# against size-matched random sets, and the 2x2 tables. The science is in
# circuit_repro.papers.recall.
from circuit_repro.papers.recall.analysis import TABLES as RECALL_TABLES
from circuit_repro.pipeline.resources import resource_functions

RECALL = config["recall"]


rule recall_analysis:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts="results/tasks/{model}/recall_reasoning.jsonl",
    output:
        **{name: f"results/recall/{{model}}/{name}.csv" for name in RECALL_TABLES},
    log:
        "logs/recall/{model}/analysis.log",
    benchmark:
        "benchmarks/recall/{model}/analysis.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        recall=RECALL,
        seed=config["seed"],
    script:
        "../../scripts/recall/analysis.py"


rule recall_claims:
    input:
        claims_file=PAPERS["recall"].claims_source,
        contrasts="results/recall/{model}/contrasts.csv",
        baselines=["results/tasks/{model}/baseline/recall_reasoning.json"],
        scores="results/tasks/{model}/baseline/recall_reasoning.csv",
        prompts="results/tasks/{model}/recall_reasoning.jsonl",
    output:
        claims="results/recall/{model}/claims.csv",
    log:
        "logs/recall/{model}/claims.log",
    benchmark:
        "benchmarks/recall/{model}/claims.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        baseline=config["baseline"],
        seed=config["seed"],
    script:
        "../../scripts/recall/claims.py"


rule recall_notebook:
    input:
        notebook=PAPERS["recall"].notebook,
        tables=expand("results/recall/{{model}}/{name}.csv", name=RECALL_TABLES),
        claims="results/recall/{model}/claims.csv",
    output:
        notebook="results/notebooks/recall/{model}.ipynb",
        patching_png=report(
            "results/figures/recall/{model}/patching.png",
            caption="../../report/recall_patching.rst",
            category="P7 Recall vs reasoning",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "patching maps and head effects"},
        ),
        patching_pdf="results/figures/recall/{model}/patching.pdf",
        dissociation_png=report(
            "results/figures/recall/{model}/dissociation.png",
            caption="../../report/recall_dissociation.rst",
            category="P7 Recall vs reasoning",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "the 2x2 tables"},
        ),
        dissociation_pdf="results/figures/recall/{model}/dissociation.pdf",
        controls_png=report(
            "results/figures/recall/{model}/controls.png",
            caption="../../report/recall_controls.rst",
            category="P7 Recall vs reasoning",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "random-set controls"},
        ),
        controls_pdf="results/figures/recall/{model}/controls.pdf",
    log:
        "logs/notebooks/recall_{model}.log",
    benchmark:
        "benchmarks/notebooks/recall_{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "results_dir": f"results/recall/{wildcards.model}",
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["recall"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
