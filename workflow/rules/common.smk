# Validation and path helpers shared by every rule file. The logic lives in the
# library (circuit_repro.config, tested); this file only wires it into Snakemake.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "lib"))

from circuit_repro.config import ConfigError, check_config, enabled_tasks, load_registry

try:
    REGISTRY = load_registry(Path(workflow.basedir) / "config" / "models.yaml")
    check_config(config, REGISTRY)
except ConfigError as error:
    # One line for the user instead of a traceback.
    sys.exit(str(error))

MODELS = config["models"]
# One software environment for every rule (used with --sdm conda).
CONDA_ENV = "../envs/circuit-repro.yaml"
# Tasks to build and score: enabled in the config and known to the library.
TASKS = enabled_tasks(config)


wildcard_constraints:
    model="|".join(map(re.escape, REGISTRY)),
    task="|".join(TASKS),


def model_entry(wildcards):
    """The registry entry of the rule's {model}."""
    return REGISTRY[wildcards.model]


def prepared_model(model):
    """Marker file of a prepared model folder (written last by prepare_model)."""
    return f"resources/models/{model}/provenance.json"


def final_outputs():
    """Everything `snakemake` (rule all) builds for the configured models."""
    ioi_figures = [
        "results/figures/ioi_baseline/ioi_baseline.png",
        "results/figures/ioi_baseline/ioi_baseline.pdf",
    ]
    return [
        *expand("results/tasks/{model}/baseline.csv", model=MODELS),
        *(ioi_figures if "ioi" in TASKS else []),
        "results/figures/task_baselines/task_baselines.png",
        "results/figures/task_baselines/task_baselines.pdf",
        "results/tasks/baseline_summary.html",
    ]
