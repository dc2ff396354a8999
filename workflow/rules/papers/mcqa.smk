# P1. Multiple-choice "correct letter" heads (Lieberum et al. 2023). The default models
# answer the letter format at chance, so each is analysed through the final checkpoint
# of its post-training series (`mcqa.post_trained`); one analysis job per model, one
# job for the correct-letter heads across the series' checkpoints. The science is in
# circuit_repro.papers.mcqa.
from circuit_repro.papers.mcqa import (
    FIGURE_LABELS as MCQA_FIGURE_LABELS,
    TABLES as MCQA_TABLES,
    task_of as mcqa_task_of,
)
from circuit_repro.models.registry import series_members
from circuit_repro.pipeline.resources import resource_functions

MCQA = config["mcqa"]
MCQA_TASK = mcqa_task_of(config)
MCQA_UNITS = PAPERS["mcqa"].result_units(config) if MCQA.get("enabled", True) else []
MCQA_UNITS_PATTERN = "|".join(map(re.escape, MCQA_UNITS)) or "(?!)"


rule mcqa_analysis:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts=f"results/tasks/{{model}}/{MCQA_TASK}.jsonl",
    output:
        **{name: f"results/mcqa/{{model}}/{name}.csv" for name in MCQA_TABLES},
        summary="results/mcqa/{model}/summary.json",
    log:
        "logs/mcqa/{model}/analysis.log",
    benchmark:
        "benchmarks/mcqa/{model}/analysis.tsv"
    wildcard_constraints:
        model=MCQA_UNITS_PATTERN,
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        mcqa=MCQA,
        seed=config["seed"],
    script:
        "../../scripts/mcqa/analysis.py"


rule mcqa_checkpoints:
    input:
        models=lambda wildcards: [
            prepared_model(member)
            for member in series_members(
                REGISTRY, REGISTRY[wildcards.model].get("series", "")
            )
        ],
        prompts=f"results/tasks/{{model}}/{MCQA_TASK}.jsonl",
        summary="results/mcqa/{model}/summary.json",
    output:
        checkpoints="results/mcqa/{model}/checkpoints.csv",
    log:
        "logs/mcqa/{model}/checkpoints.log",
    benchmark:
        "benchmarks/mcqa/{model}/checkpoints.tsv"
    wildcard_constraints:
        model=MCQA_UNITS_PATTERN,
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        mcqa=MCQA,
        seed=config["seed"],
        steps=lambda wildcards, input: [
            REGISTRY[Path(path).parent.name].get("step", 0) for path in input.models
        ],
    script:
        "../../scripts/mcqa/checkpoints.py"


rule mcqa_claims:
    input:
        claims_file=PAPERS["mcqa"].claims_source,
        tables=expand(
            "results/mcqa/{{model}}/{name}.csv",
            name=(
                "dla_prompts",
                "attention_prompts",
                "compression_prompts",
                "enumeration_points",
            ),
        ),
        summary="results/mcqa/{model}/summary.json",
        checkpoints="results/mcqa/{model}/checkpoints.csv",
    output:
        claims="results/mcqa/{model}/claims.csv",
    log:
        "logs/mcqa/{model}/claims.log",
    benchmark:
        "benchmarks/mcqa/{model}/claims.tsv"
    wildcard_constraints:
        model=MCQA_UNITS_PATTERN,
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        mcqa=MCQA,
        task=MCQA_TASK,
        seed=config["seed"],
    script:
        "../../scripts/mcqa/claims.py"


rule mcqa_notebook:
    input:
        notebook=PAPERS["mcqa"].notebook,
        tables=expand("results/mcqa/{{model}}/{name}.csv", name=MCQA_TABLES),
        checkpoints="results/mcqa/{model}/checkpoints.csv",
        claims="results/mcqa/{model}/claims.csv",
    output:
        **{
            f"{name}_png": report(
                f"results/figures/mcqa/{{model}}/{name}.png",
                caption=f"../../report/mcqa_{name}.rst",
                category="P1 Correct-letter heads (MCQA)",
                subcategory="{model}",
                labels={"model": "{model}", "figure": label},
            )
            for name, label in MCQA_FIGURE_LABELS.items()
        },
        **{
            f"{name}_pdf": f"results/figures/mcqa/{{model}}/{name}.pdf"
            for name in MCQA_FIGURE_LABELS
        },
        notebook="results/notebooks/mcqa/{model}.ipynb",
    log:
        "logs/notebooks/mcqa_{model}.log",
    benchmark:
        "benchmarks/notebooks/mcqa_{model}.tsv"
    wildcard_constraints:
        model=MCQA_UNITS_PATTERN,
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "results_dir": f"results/mcqa/{wildcards.model}",
            "checkpoints_path": input.checkpoints,
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["mcqa"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
