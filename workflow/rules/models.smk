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
