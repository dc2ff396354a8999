# MIB's circuit-localisation track (Mueller et al. 2025): every method's edge scores on
# IOI (each model) and MCQA (the model the mcqa paper analyses), their circuits'
# faithfulness curves, CPR and CMD, and recovery of a circuit planted in tiny models.
# Off in the default run (circuits.enabled); the science is in
# circuit_repro.papers.circuits.
from circuit_repro.papers.circuits import (
    METHODS as CIRCUITS_METHODS,
    configured_tasks as circuits_configured_tasks,
    task_model as circuits_task_model,
)
from circuit_repro.pipeline.resources import resource_functions

CIRCUITS = config["circuits"]
CIRCUITS_TASKS = circuits_configured_tasks(config)
CIRCUITS_EDGE_METHODS = [m for m in CIRCUITS_METHODS if m != "atp"]


# One job per model and task: every method's scores, then every circuit of every method
# measured on every prompt in one batched evaluation.
rule circuits_evaluate:
    input:
        model=lambda wildcards: prepared_model(
            circuits_task_model(config, wildcards.model, wildcards.task)
        ),
        prompts=lambda wildcards: "results/tasks/{}/{}.jsonl".format(
            circuits_task_model(config, wildcards.model, wildcards.task),
            wildcards.task,
        ),
    output:
        **{
            f"mib_{method}": f"results/circuits/{{model}}/{{task}}/mib/{method}.json"
            for method in CIRCUITS_EDGE_METHODS
        },
        prompt_metrics="results/circuits/{model}/{task}/prompt_metrics.csv",
        methods="results/circuits/{model}/{task}/methods.csv",
        nodes="results/circuits/{model}/{task}/atp_nodes.csv",
    log:
        "logs/circuits/{model}/{task}/evaluate.log",
    benchmark:
        "benchmarks/circuits/{model}/{task}/evaluate.tsv"
    wildcard_constraints:
        task="|".join(CIRCUITS_TASKS),
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        methods=CIRCUITS_EDGE_METHODS,
        compute=config["compute"],
        circuits=CIRCUITS,
        seed=config["seed"],
    script:
        "../../scripts/circuits/evaluate.py"


rule circuits_planted:
    input:
        models=[prepared_model(model) for model in CIRCUITS["planted_models"]],
    output:
        planted="results/circuits/planted.csv",
    log:
        "logs/circuits/planted.log",
    benchmark:
        "benchmarks/circuits/planted.tsv"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        models=CIRCUITS["planted_models"],
        circuits=CIRCUITS,
        seed=config["seed"],
    script:
        "../../scripts/circuits/planted.py"


rule circuits_curves:
    input:
        prompt_metrics=expand(
            "results/circuits/{{model}}/{task}/prompt_metrics.csv", task=CIRCUITS_TASKS
        ),
        methods=expand(
            "results/circuits/{{model}}/{task}/methods.csv", task=CIRCUITS_TASKS
        ),
    output:
        curves="results/circuits/{model}/curves.csv",
        areas="results/circuits/{model}/areas.csv",
    log:
        "logs/circuits/{model}/curves.log",
    benchmark:
        "benchmarks/circuits/{model}/curves.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        tasks=CIRCUITS_TASKS,
        task_models=lambda wildcards: {
            task: circuits_task_model(config, wildcards.model, task)
            for task in CIRCUITS_TASKS
        },
        circuits=CIRCUITS,
        seed=config["seed"],
    script:
        "../../scripts/circuits/curves.py"


rule circuits_claims:
    input:
        claims_file=PAPERS["circuits"].claims_source,
        prompt_metrics=expand(
            "results/circuits/{{model}}/{task}/prompt_metrics.csv", task=CIRCUITS_TASKS
        ),
        baselines=lambda wildcards: [
            "results/tasks/{}/baseline/{}.json".format(
                circuits_task_model(config, wildcards.model, task), task
            )
            for task in CIRCUITS_TASKS
        ],
    output:
        claims="results/circuits/{model}/claims.csv",
    log:
        "logs/circuits/{model}/claims.log",
    benchmark:
        "benchmarks/circuits/{model}/claims.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        tasks=CIRCUITS_TASKS,
        task_models=lambda wildcards: {
            task: circuits_task_model(config, wildcards.model, task)
            for task in CIRCUITS_TASKS
        },
        circuits=CIRCUITS,
        seed=config["seed"],
    script:
        "../../scripts/circuits/claims.py"


rule circuits_notebook:
    input:
        notebook=PAPERS["circuits"].notebook,
        curves="results/circuits/{model}/curves.csv",
        areas="results/circuits/{model}/areas.csv",
        planted="results/circuits/planted.csv",
        claims="results/circuits/{model}/claims.csv",
    output:
        notebook="results/notebooks/circuits/{model}.ipynb",
        curves_png=report(
            "results/figures/circuits/{model}/curves.png",
            caption="../../report/circuits_curves.rst",
            category="MIB circuit localisation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "faithfulness curves"},
        ),
        curves_pdf="results/figures/circuits/{model}/curves.pdf",
        areas_png=report(
            "results/figures/circuits/{model}/areas.png",
            caption="../../report/circuits_areas.rst",
            category="MIB circuit localisation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "CPR and CMD per method"},
        ),
        areas_pdf="results/figures/circuits/{model}/areas.pdf",
        planted_png=report(
            "results/figures/circuits/{model}/planted.png",
            caption="../../report/circuits_planted.rst",
            category="MIB circuit localisation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "planted-circuit recovery"},
        ),
        planted_pdf="results/figures/circuits/{model}/planted.pdf",
    log:
        "logs/notebooks/circuits_{model}.log",
    benchmark:
        "benchmarks/notebooks/circuits_{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "curves_path": input.curves,
            "areas_path": input.areas,
            "planted_path": input.planted,
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["circuits"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
