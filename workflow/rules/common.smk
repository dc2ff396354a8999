# Validation and path helpers shared by every rule file. The logic lives in the
# library (circuit_repro.pipeline.config, tested); this file only wires it into Snakemake.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "lib"))

from circuit_repro.models.verify import invalidate_if_corrupted
from circuit_repro.papers import PAPERS
from circuit_repro.pipeline.config import (
    ConfigError,
    check_config,
    enabled_tasks,
    load_registry,
    paper_tasks,
)
from circuit_repro.pipeline.report import figure_records
from circuit_repro.pipeline.targets import (
    REPORT,
    MERGED_CLAIMS,
    all_targets,
    paper_claims,
)

try:
    REGISTRY = load_registry(Path(workflow.basedir) / "config" / "models.yaml")
    check_config(config, REGISTRY)
except ConfigError as error:
    # One line for the user instead of a traceback.
    sys.exit(str(error))

MODELS = config["models"]


# Threads for jobs that run a model. Locally, half the cores, so that two such jobs run
# side by side: a job at small batch sizes leaves its cores idle in Python and in
# memory-bound steps, and on the 2-core CPU two one-thread jobs finish about 10% sooner
# than the same jobs one after the other on two threads (docs/architecture.md). Inside
# a cluster job (remote mode) every core of the job's allocation.
def _model_threads():
    try:
        cores = workflow.cores
    except WorkflowError:  # a cluster run sets no --cores: resources set the CPUs
        return 1
    if not isinstance(cores, int):
        return 1
    if workflow.remote_exec or not workflow.local_exec:
        return min(cores, 16)
    return max(1, min(cores, 32) // 2)


MODEL_THREADS = _model_threads()
# One software environment for every rule (used with --sdm conda).
CONDA_ENV = str(Path(workflow.basedir) / "workflow" / "envs" / "circuit-repro.yaml")
# Tasks to build and score: enabled in the config and known to the library.
TASKS = enabled_tasks(config)
# The figures of the report, with their captions and the files that made them.
REPORT_FIGURES = figure_records(config)


wildcard_constraints:
    model="|".join(map(re.escape, REGISTRY)),
    task="|".join(TASKS),


def model_entry(wildcards):
    """The registry entry of the rule's {model}."""
    return REGISTRY[wildcards.model]


def prepared_model(model):
    """Marker file of a prepared model folder (written last by prepare_model); removed
    first when the folder's files no longer match it, so the model is prepared again."""
    invalidate_if_corrupted(f"resources/models/{model}")
    return f"resources/models/{model}/provenance.json"


# Checkpoint series this pipeline trains (source: trained), by series id.
TRAINED_SERIES = [
    model_id
    for model_id, entry in REGISTRY.items()
    if entry["source"] == "trained" and isinstance(entry.get("series"), dict)
]
TRAINED_SERIES_PATTERN = "|".join(map(re.escape, TRAINED_SERIES)) or "(?!)"


def series_training_output(model):
    """The training job's manifest that a trained series member is prepared from."""
    entry = REGISTRY[model]
    if entry["source"] != "trained":
        return []
    return [f"resources/series/{entry['series']}/trained.json"]


def series_base_input(series):
    """The prepared base model a series fine-tunes (nothing when trained from scratch)."""
    base = REGISTRY[series].get("base")
    return [prepared_model(base)] if base else []


def paper_tasks_pattern(paper):
    """Wildcard constraint: the tasks a paper's rules read."""
    return "|".join(paper_tasks(config, paper))
