# P5. The subspace activation-patching illusion (Makelov, Lange & Nanda 2023).
# IOI position feature: layer scan, DAS directions in an MLP and the residual stream,
# their row-space and kernel parts, Table 1; factual recall: per-fact directions and the
# rank-1 edits they define. The science is in circuit_repro.papers.subspace.
from circuit_repro.pipeline.resources import resource_functions

SUBSPACE = config["subspace"]
SUBSPACE_IOI_TABLES = ("pairs", "scan", "readers", "table", "contrasts", "training")


# The IOI pairs are built in the job from the tokenizer (training and test sets with
# disjoint names, templates, places and objects), so the job reads only the model.
rule subspace_ioi:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
    output:
        **{
            name: f"results/subspace/{{model}}/{name}.csv"
            for name in SUBSPACE_IOI_TABLES
        },
        directions="results/subspace/{model}/directions.safetensors",
    log:
        "logs/subspace/{model}/ioi.log",
    benchmark:
        "benchmarks/subspace/{model}/ioi.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        subspace=SUBSPACE,
        seed=config["seed"],
    script:
        "../../scripts/subspace/ioi.py"


rule subspace_facts:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts="results/tasks/{model}/facts.jsonl",
    output:
        per_pair="results/subspace/{model}/facts_pairs.csv",
        summary="results/subspace/{model}/facts_summary.csv",
    log:
        "logs/subspace/{model}/facts.log",
    benchmark:
        "benchmarks/subspace/{model}/facts.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        subspace=SUBSPACE,
        seed=config["seed"],
    script:
        "../../scripts/subspace/facts.py"


rule subspace_claims:
    input:
        claims_file=PAPERS["subspace"].claims_source,
        table="results/subspace/{model}/table.csv",
        contrasts="results/subspace/{model}/contrasts.csv",
        facts_summary="results/subspace/{model}/facts_summary.csv",
        baselines=expand(
            "results/tasks/{{model}}/baseline/{task}.json",
            task=paper_tasks(config, "subspace"),
        ),
    output:
        claims="results/subspace/{model}/claims.csv",
    log:
        "logs/subspace/{model}/claims.log",
    benchmark:
        "benchmarks/subspace/{model}/claims.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    script:
        "../../scripts/subspace/claims.py"


rule subspace_notebook:
    input:
        notebook=PAPERS["subspace"].notebook,
        scan="results/subspace/{model}/scan.csv",
        readers="results/subspace/{model}/readers.csv",
        table="results/subspace/{model}/table.csv",
        contrasts="results/subspace/{model}/contrasts.csv",
        training="results/subspace/{model}/training.csv",
        facts_pairs="results/subspace/{model}/facts_pairs.csv",
        facts_summary="results/subspace/{model}/facts_summary.csv",
        claims="results/subspace/{model}/claims.csv",
    output:
        notebook="results/notebooks/subspace/{model}.ipynb",
        table1_png=report(
            "results/figures/subspace/{model}/table1.png",
            caption="../../report/subspace_table1.rst",
            category="P5 Subspace patching illusion",
            subcategory="{model}",
            labels={
                "model": "{model}",
                "figure": "Table 1: FLDD and interchange accuracy",
            },
        ),
        table1_pdf="results/figures/subspace/{model}/table1.pdf",
        decomposition_png=report(
            "results/figures/subspace/{model}/decomposition.png",
            caption="../../report/subspace_decomposition.rst",
            category="P5 Subspace patching illusion",
            subcategory="{model}",
            labels={
                "model": "{model}",
                "figure": "layer scan and row-space / kernel parts",
            },
        ),
        decomposition_pdf="results/figures/subspace/{model}/decomposition.pdf",
        fact_editing_png=report(
            "results/figures/subspace/{model}/fact_editing.png",
            caption="../../report/subspace_fact_editing.rst",
            category="P5 Subspace patching illusion",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "fact editing"},
        ),
        fact_editing_pdf="results/figures/subspace/{model}/fact_editing.pdf",
    log:
        "logs/notebooks/subspace_{model}.log",
    benchmark:
        "benchmarks/notebooks/subspace_{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "scan_path": input.scan,
            "readers_path": input.readers,
            "table_path": input.table,
            "contrasts_path": input.contrasts,
            "training_path": input.training,
            "facts_pairs_path": input.facts_pairs,
            "facts_summary_path": input.facts_summary,
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["subspace"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
