# P2. Circuit component reuse across tasks (Merullo, Eickhoff & Pavlick 2023).
# IOI and Colored Objects circuits by path patching, their overlap (with control tasks),
# the attention intervention on Colored Objects, the claims table and the figures.
# The science is in circuit_repro.papers.reuse; the scripts only read and write files.
from circuit_repro.pipeline.resources import resource_functions

REUSE = config["reuse"]
REUSE_TASKS = paper_tasks(config, "reuse")


# One job per model runs every task's path patching (one model load); outputs stay per
# task, and a task whose prompts, model, settings and code are unchanged is read back
# from the memo (circuit_repro.pipeline.memo) instead of being patched again.
rule reuse_circuit:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts=expand("results/tasks/{{model}}/{task}.jsonl", task=REUSE_TASKS),
    output:
        **{
            f"{task}_{kind}": f"results/reuse/{{model}}/{kind}/{task}.csv"
            for task in REUSE_TASKS
            for kind in ("path_patching", "heads")
        },
    log:
        "logs/reuse/{model}/circuit.log",
    benchmark:
        "benchmarks/reuse/{model}/circuit.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        tasks=REUSE_TASKS,
        memo=lambda wildcards: f"results/reuse/{wildcards.model}/.memo",
        compute=config["compute"],
        reuse=REUSE,
        seed=config["seed"],
    script:
        "../../scripts/reuse/circuit.py"


rule reuse_overlap:
    input:
        path_patching=expand(
            "results/reuse/{{model}}/path_patching/{task}.csv", task=REUSE_TASKS
        ),
        reference_heads="results/reuse/{model}/heads/ioi.csv",
    output:
        overlap="results/reuse/{model}/overlap.csv",
    log:
        "logs/reuse/{model}/overlap.log",
    benchmark:
        "benchmarks/reuse/{model}/overlap.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        tasks=REUSE_TASKS,
        reuse=REUSE,
        seed=config["seed"],
    script:
        "../../scripts/reuse/overlap.py"


rule reuse_intervention:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts="results/tasks/{model}/colored_objects.jsonl",
        reference_heads="results/reuse/{model}/heads/ioi.csv",
        path_patching="results/reuse/{model}/path_patching/colored_objects.csv",
        target_heads="results/reuse/{model}/heads/colored_objects.csv",
    output:
        groups="results/reuse/{model}/intervention.csv",
        random_heads="results/reuse/{model}/intervention_random.csv",
        per_head="results/reuse/{model}/intervention_heads.csv",
        correlation="results/reuse/{model}/intervention_correlation.json",
    log:
        "logs/reuse/{model}/intervention.log",
    benchmark:
        "benchmarks/reuse/{model}/intervention.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        memo=lambda wildcards: f"results/reuse/{wildcards.model}/.memo",
        compute=config["compute"],
        reuse=REUSE,
        seed=config["seed"],
    script:
        "../../scripts/reuse/intervention.py"


rule reuse_claims:
    input:
        claims_file=PAPERS["reuse"].claims_source,
        overlap="results/reuse/{model}/overlap.csv",
        groups="results/reuse/{model}/intervention.csv",
        correlation="results/reuse/{model}/intervention_correlation.json",
        baselines=expand(
            "results/tasks/{{model}}/baseline/{task}.json", task=REUSE_TASKS
        ),
    output:
        claims="results/reuse/{model}/claims.csv",
    log:
        "logs/reuse/{model}/claims.log",
    benchmark:
        "benchmarks/reuse/{model}/claims.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    script:
        "../../scripts/reuse/claims.py"


rule reuse_notebook:
    input:
        notebook=PAPERS["reuse"].notebook,
        heads=expand("results/reuse/{{model}}/heads/{task}.csv", task=REUSE_TASKS),
        overlap="results/reuse/{model}/overlap.csv",
        groups="results/reuse/{model}/intervention.csv",
        random_heads="results/reuse/{model}/intervention_random.csv",
        per_head="results/reuse/{model}/intervention_heads.csv",
        correlation="results/reuse/{model}/intervention_correlation.json",
        claims="results/reuse/{model}/claims.csv",
    output:
        notebook="results/notebooks/reuse/{model}.ipynb",
        head_effects_png=report(
            "results/figures/reuse/{model}/head_effects.png",
            caption="../../report/reuse_head_effects.rst",
            category="P2 Circuit component reuse",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "head effects per task"},
        ),
        head_effects_pdf="results/figures/reuse/{model}/head_effects.pdf",
        overlap_png=report(
            "results/figures/reuse/{model}/overlap.png",
            caption="../../report/reuse_overlap.rst",
            category="P2 Circuit component reuse",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "circuit overlap"},
        ),
        overlap_pdf="results/figures/reuse/{model}/overlap.pdf",
        intervention_png=report(
            "results/figures/reuse/{model}/intervention.png",
            caption="../../report/reuse_intervention.rst",
            category="P2 Circuit component reuse",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "attention intervention"},
        ),
        intervention_pdf="results/figures/reuse/{model}/intervention.pdf",
    log:
        "logs/notebooks/reuse_{model}.log",
    benchmark:
        "benchmarks/notebooks/reuse_{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "tasks": REUSE_TASKS,
            "heads_paths": list(input.heads),
            "overlap_path": input.overlap,
            "intervention_path": input.groups,
            "random_heads_path": input.random_heads,
            "per_head_path": input.per_head,
            "correlation_path": input.correlation,
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["reuse"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
