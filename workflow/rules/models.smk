# Model preparation in two steps: fetch (network; a local rule so that on a cluster it
# runs on the submitting host) and prepare (convert to safetensors; any node).
# resources: memory, time, CPUs and GPUs from the model's size and the rule's kind
# (circuit_repro.pipeline.resources); a cluster executor (workflow/profiles/slurm) requests them.
from circuit_repro.pipeline.resources import resource_functions


localrules:
    fetch_model,


rule fetch_model:
    output:
        manifest="resources/downloads/{model}/fetched.json",
    log:
        "logs/models/{model}/fetch.log",
    benchmark:
        "benchmarks/models/{model}/fetch.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("fetch", REGISTRY, config["compute"]["device"]),
    params:
        entry=model_entry,
    script:
        "../scripts/fetch_model.py"


rule prepare_model:
    input:
        manifest="resources/downloads/{model}/fetched.json",
        series=lambda wildcards: series_training_output(wildcards.model),
    output:
        marker="resources/models/{model}/provenance.json",
    log:
        "logs/models/{model}/prepare.log",
    benchmark:
        "benchmarks/models/{model}/prepare.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("prepare", REGISTRY, config["compute"]["device"]),
    params:
        entry=model_entry,
    script:
        "../scripts/prepare_model.py"


# A trained checkpoint series (config/models.yaml, source: trained) is trained by one
# job, which resumes from its last complete checkpoint; each checkpoint then becomes a
# prepared model <series>@step<N> (prepare_model links its files into place).
rule train_series:
    input:
        base=lambda wildcards: series_base_input(wildcards.series),
    output:
        manifest="resources/series/{series}/trained.json",
        losses="results/training/{series}/losses.csv",
    log:
        "logs/training/{series}/train.log",
    benchmark:
        "benchmarks/training/{series}/train.tsv"
    wildcard_constraints:
        series=TRAINED_SERIES_PATTERN,
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("training", REGISTRY, config["compute"]["device"]),
    params:
        entry=lambda wildcards: REGISTRY[wildcards.series],
    script:
        "../scripts/train_series.py"
