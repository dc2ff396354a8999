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


# One job per model scores every task (one model load); outputs stay per task, and a
# task whose prompts, model or settings did not change is read back from the memo
# (circuit_repro.pipeline.memo) instead of being scored again.
rule baseline:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts=expand("results/tasks/{{model}}/{task}.jsonl", task=TASKS),
    output:
        **{
            f"{task}_{kind}": f"results/tasks/{{model}}/baseline/{task}.{extension}"
            for task in TASKS
            for kind, extension in (("scores", "csv"), ("summary", "json"))
        },
    log:
        "logs/tasks/{model}/baseline.log",
    benchmark:
        "benchmarks/tasks/{model}/baseline.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        tasks=TASKS,
        memo=lambda wildcards: f"results/tasks/{wildcards.model}/baseline/.memo",
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
