# Validation and path helpers shared by every rule file. The logic lives in the
# library (circuit_repro.pipeline.config, tested); this file only wires it into Snakemake.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "lib"))

from circuit_repro.pipeline.config import (
    ConfigError,
    check_config,
    enabled_tasks,
    load_registry,
    paper_tasks,
)

try:
    REGISTRY = load_registry(Path(workflow.basedir) / "config" / "models.yaml")
    check_config(config, REGISTRY)
except ConfigError as error:
    # One line for the user instead of a traceback.
    sys.exit(str(error))

MODELS = config["models"]


# Threads for jobs that run a model (torch uses them all), so locally such jobs run one
# at a time on every core instead of several single-threaded ones competing.
def _model_threads():
    try:
        cores = workflow.cores
    except WorkflowError:  # a cluster run sets no --cores: resources set the CPUs
        return 1
    return min(cores, 16) if isinstance(cores, int) else 1


MODEL_THREADS = _model_threads()
# One software environment for every rule (used with --sdm conda).
CONDA_ENV = str(Path(workflow.basedir) / "workflow" / "envs" / "circuit-repro.yaml")
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


# P2, circuit component reuse (workflow/rules/reuse.smk).
REUSE = config["reuse"]
REUSE_TASKS = paper_tasks(config, "reuse")
REUSE_FIGURES = ["head_effects", "overlap", "intervention"]


def reuse_outputs():
    """Figures and claims of every configured model (empty when the paper is off)."""
    if not REUSE["enabled"]:
        return []
    return [
        *expand("results/reuse/{model}/claims.csv", model=MODELS),
        *expand(
            "results/figures/reuse/{model}/{figure}.{ext}",
            model=MODELS,
            figure=REUSE_FIGURES,
            ext=["png", "pdf"],
        ),
    ]


def paper_claims():
    """claims.csv of every enabled paper and model."""
    return [path for path in reuse_outputs() if path.endswith("claims.csv")]


def claims_outputs():
    """The merged claims table and its page, when any paper is enabled."""
    return ["results/claims.csv", "results/claims.html"] if paper_claims() else []
