# Task data sets (tokenizer-aware, seeded) and each model's baseline behaviour.


rule build_task:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
    output:
        prompts="results/tasks/{model}/{task}.jsonl",
    log:
        "logs/tasks/{model}/{task}.log",
    benchmark:
        "benchmarks/tasks/{model}/{task}.tsv"
    conda:
        CONDA_ENV
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
    conda:
        CONDA_ENV
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
    conda:
        CONDA_ENV
    script:
        "../scripts/baseline_table.py"
