# P6. The in-context learning inference circuit (Cho et al. 2024).
# Per ICL task: the k-shot curve, the forerunner probes (step 1), kernel alignment
# (step 2), head counts (step 3) and attention-edge knockouts of each step per range of
# layers against random-edge controls. The science is in circuit_repro.papers.icl.
from circuit_repro.papers.icl.run import TABLES as ICL_TABLES
from circuit_repro.pipeline.resources import resource_functions

ICL = config["icl"]
ICL_TASKS = paper_tasks(config, "icl")


# One job per model and ICL task: it reads the task's prompts (the configured k) and
# builds the k-shot curve's prompts from the tokenizer.
rule icl_task:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts="results/tasks/{model}/{task}.jsonl",
    output:
        **{name: f"results/icl/{{model}}/{{task}}/{name}.csv" for name in ICL_TABLES},
    log:
        "logs/icl/{model}/{task}.log",
    benchmark:
        "benchmarks/icl/{model}/{task}.tsv"
    wildcard_constraints:
        task=paper_tasks_pattern("icl"),
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        icl=ICL,
        seed=config["seed"],
    script:
        "../../scripts/icl/task.py"


rule icl_claims:
    input:
        claims_file=PAPERS["icl"].claims_source,
        contrasts=expand("results/icl/{{model}}/{task}/contrasts.csv", task=ICL_TASKS),
        knockouts=expand("results/icl/{{model}}/{task}/knockouts.csv", task=ICL_TASKS),
        baselines=expand("results/tasks/{{model}}/baseline/{task}.json", task=ICL_TASKS),
    output:
        claims="results/icl/{model}/claims.csv",
    log:
        "logs/icl/{model}/claims.log",
    benchmark:
        "benchmarks/icl/{model}/claims.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        tasks=ICL_TASKS,
    script:
        "../../scripts/icl/claims.py"


rule icl_notebook:
    input:
        notebook=PAPERS["icl"].notebook,
        tables=expand(
            "results/icl/{{model}}/{task}/{name}.csv", task=ICL_TASKS, name=ICL_TABLES
        ),
        claims="results/icl/{model}/claims.csv",
    output:
        notebook="results/notebooks/icl/{model}.ipynb",
        curves_png=report(
            "results/figures/icl/{model}/curves.png",
            caption="../../report/icl_curves.rst",
            category="P6 ICL inference circuit",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "k-shot accuracy"},
        ),
        curves_pdf="results/figures/icl/{model}/curves.pdf",
        probes_png=report(
            "results/figures/icl/{model}/probes.png",
            caption="../../report/icl_probes.rst",
            category="P6 ICL inference circuit",
            subcategory="{model}",
            labels={
                "model": "{model}",
                "figure": "forerunner probes and semantics merge",
            },
        ),
        probes_pdf="results/figures/icl/{model}/probes.pdf",
        heads_png=report(
            "results/figures/icl/{model}/heads.png",
            caption="../../report/icl_heads.rst",
            category="P6 ICL inference circuit",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "head counts per layer"},
        ),
        heads_pdf="results/figures/icl/{model}/heads.pdf",
        knockouts_png=report(
            "results/figures/icl/{model}/knockouts.png",
            caption="../../report/icl_knockouts.rst",
            category="P6 ICL inference circuit",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "attention-edge knockouts"},
        ),
        knockouts_pdf="results/figures/icl/{model}/knockouts.pdf",
    log:
        "logs/notebooks/icl_{model}.log",
    benchmark:
        "benchmarks/notebooks/icl_{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "tasks": list(ICL_TASKS),
            "task_dirs": {
                task: f"results/icl/{wildcards.model}/{task}" for task in ICL_TASKS
            },
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["icl"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
