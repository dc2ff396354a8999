# P3. Transcoders vs SAEs, and a transcoder feature circuit for greater-than (Dunefsky,
# Chlenski & Nanda 2024). Per model: the greater-than MLP, a sweep of transcoders and
# SAEs trained there on offline text (one job), their sparsity and faithfulness,
# greater-than with the top-k features vs neurons and the feature connections, claims
# and figures. The science is in circuit_repro.papers.transcoders.
from circuit_repro.papers.transcoders import (
    FIGURE_LABELS as TRANSCODERS_FIGURE_LABELS,
    TASK as TRANSCODERS_TASK,
)
from circuit_repro.pipeline.resources import resource_functions

TRANSCODERS = config["transcoders"]


rule transcoders_layer:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts=f"results/tasks/{{model}}/{TRANSCODERS_TASK}.jsonl",
    output:
        layers="results/transcoders/{model}/layers.csv",
        layer="results/transcoders/{model}/layer.json",
    log:
        "logs/transcoders/{model}/layer.log",
    benchmark:
        "benchmarks/transcoders/{model}/layer.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        transcoders=TRANSCODERS,
        seed=config["seed"],
    script:
        "../../scripts/transcoders/layer.py"


rule transcoders_train:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        layer="results/transcoders/{model}/layer.json",
    output:
        dictionaries=directory("results/transcoders/{model}/dictionaries"),
        training="results/transcoders/{model}/training.csv",
        corpus="results/transcoders/{model}/corpus.json",
    log:
        "logs/transcoders/{model}/train.log",
    benchmark:
        "benchmarks/transcoders/{model}/train.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("training", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        transcoders=TRANSCODERS,
        seed=config["seed"],
        shards=lambda wildcards: f"resources/activations/{wildcards.model}",
    script:
        "../../scripts/transcoders/train.py"


rule transcoders_evaluate:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        dictionaries="results/transcoders/{model}/dictionaries",
    output:
        sweep="results/transcoders/{model}/sweep.csv",
        losses="results/transcoders/{model}/losses.csv",
        features="results/transcoders/{model}/features.csv",
    log:
        "logs/transcoders/{model}/evaluate.log",
    benchmark:
        "benchmarks/transcoders/{model}/evaluate.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        transcoders=TRANSCODERS,
        seed=config["seed"],
    script:
        "../../scripts/transcoders/evaluate.py"


rule transcoders_greater_than:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        dictionaries="results/transcoders/{model}/dictionaries",
        prompts=f"results/tasks/{{model}}/{TRANSCODERS_TASK}.jsonl",
    output:
        top_k="results/transcoders/{model}/top_k.csv",
        top_k_prompts="results/transcoders/{model}/top_k_prompts.csv",
        connections="results/transcoders/{model}/connections.csv",
    log:
        "logs/transcoders/{model}/greater_than.log",
    benchmark:
        "benchmarks/transcoders/{model}/greater_than.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        transcoders=TRANSCODERS,
        seed=config["seed"],
    script:
        "../../scripts/transcoders/greater_than.py"


rule transcoders_claims:
    input:
        claims_file=PAPERS["transcoders"].claims_source,
        sweep="results/transcoders/{model}/sweep.csv",
        losses="results/transcoders/{model}/losses.csv",
        top_k="results/transcoders/{model}/top_k.csv",
        top_k_prompts="results/transcoders/{model}/top_k_prompts.csv",
        connections="results/transcoders/{model}/connections.csv",
        baselines=[f"results/tasks/{{model}}/baseline/{TRANSCODERS_TASK}.json"],
    output:
        claims="results/transcoders/{model}/claims.csv",
    log:
        "logs/transcoders/{model}/claims.log",
    benchmark:
        "benchmarks/transcoders/{model}/claims.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        transcoders=TRANSCODERS,
        seed=config["seed"],
    script:
        "../../scripts/transcoders/claims.py"


rule transcoders_notebook:
    input:
        notebook=PAPERS["transcoders"].notebook,
        sweep="results/transcoders/{model}/sweep.csv",
        training="results/transcoders/{model}/training.csv",
        layers="results/transcoders/{model}/layers.csv",
        top_k="results/transcoders/{model}/top_k.csv",
        connections="results/transcoders/{model}/connections.csv",
        features="results/transcoders/{model}/features.csv",
        claims="results/transcoders/{model}/claims.csv",
    output:
        **{
            f"{name}_png": report(
                f"results/figures/transcoders/{{model}}/{name}.png",
                caption=f"../../report/transcoders_{name}.rst",
                category="P3 Transcoders",
                subcategory="{model}",
                labels={"model": "{model}", "figure": label},
            )
            for name, label in TRANSCODERS_FIGURE_LABELS.items()
        },
        **{
            f"{name}_pdf": f"results/figures/transcoders/{{model}}/{name}.pdf"
            for name in TRANSCODERS_FIGURE_LABELS
        },
        features_html=report(
            "results/figures/transcoders/{model}/features.html",
            caption="../../report/transcoders_features.rst",
            category="P3 Transcoders",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "top-activating contexts"},
        ),
        notebook="results/notebooks/transcoders/{model}.ipynb",
    log:
        "logs/notebooks/transcoders_{model}.log",
    benchmark:
        "benchmarks/notebooks/transcoders_{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "results_dir": f"results/transcoders/{wildcards.model}",
            "features_html": output.features_html,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["transcoders"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
