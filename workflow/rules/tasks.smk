# Task data sets (tokenizer-aware, seeded) and each model's baseline behaviour.
# On a cluster, each model's jobs here run as one job (group "model_{model}": one
# submission, one queue wait, one node); locally groups have no effect.
from circuit_repro.pipeline.resources import resource_functions


rule build_task:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
    output:
        prompts="results/tasks/{model}/{task}.jsonl",
    log:
        "logs/tasks/{model}/{task}.log",
    benchmark:
        "benchmarks/tasks/{model}/{task}.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("tasks", REGISTRY, config["compute"]["device"]),
    params:
        task=lambda wildcards: config["tasks"][wildcards.task],
        seed=config["seed"],
    script:
        "../scripts/build_task.py"


rule baseline:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts="results/tasks/{model}/{task}.jsonl",
    output:
        scores="results/tasks/{model}/baseline/{task}.csv",
        summary="results/tasks/{model}/baseline/{task}.json",
    log:
        "logs/tasks/{model}/baseline_{task}.log",
    benchmark:
        "benchmarks/tasks/{model}/baseline_{task}.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        baseline=config["baseline"],
        seed=config["seed"],
    script:
        "../scripts/baseline.py"


rule baseline_table:
    input:
        summaries=expand("results/tasks/{{model}}/baseline/{task}.json", task=TASKS),
    output:
        table="results/tasks/{model}/baseline.csv",
    log:
        "logs/tasks/{model}/baseline_table.log",
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    script:
        "../scripts/baseline_table.py"
