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
        claims_file=str(PAPERS["recall"].claims_file),
        contrasts="results/recall/{model}/contrasts.csv",
        baselines=["results/tasks/{model}/baseline/recall_reasoning.json"],
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
    script:
        "../../scripts/recall/claims.py"
