# P4. Heads that emerge in training and post-training (Park, Jeong & Kang 2025).
# The paper's unit is a checkpoint series (config/models.yaml, `series:`): one job per
# checkpoint (circuit, head importances, head types, accuracy), then per series the
# cohorts, emergent heads, emergence steps and the interventions on the emergent heads.
# On a cluster a checkpoint's job joins its model group, and a series' own steps run as
# one job (group "series_{series}"). The science is in circuit_repro.papers.sparks.
from circuit_repro.models.registry import series_members
from circuit_repro.papers.sparks import (
    CHECKPOINT_FILES as SPARKS_CHECKPOINT_FILES,
    CHECKPOINT_SETTINGS as SPARKS_CHECKPOINT_SETTINGS,
    FIGURE_LABELS as SPARKS_FIGURE_LABELS,
    checkpoint_files,
    checkpoint_prompts,
    interventions_output,
)
from circuit_repro.pipeline.resources import resource_functions

SPARKS = config["sparks"]
SPARKS_SERIES = (
    PAPERS["sparks"].result_units(config) if SPARKS.get("enabled", True) else []
)
for _series in SPARKS_SERIES:
    if not isinstance(REGISTRY.get(_series, {}).get("series"), dict):
        sys.exit(
            f"config: sparks.series names {_series!r}, which is not a checkpoint series "
            "in config/models.yaml (an entry with `series:`)"
        )
SPARKS_MEMBERS = [m for s in SPARKS_SERIES for m in series_members(REGISTRY, s)]
SPARKS_MEMBERS_PATTERN = "|".join(map(re.escape, SPARKS_MEMBERS)) or "(?!)"
SPARKS_SERIES_PATTERN = "|".join(map(re.escape, SPARKS_SERIES)) or "(?!)"


rule sparks_checkpoint:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts=lambda wildcards: checkpoint_prompts(REGISTRY, wildcards.model),
    output:
        **{
            name.split(".")[0]: f"results/sparks/{{model}}/{name}"
            for name in SPARKS_CHECKPOINT_FILES
        },
    log:
        "logs/sparks/{model}/checkpoint.log",
    benchmark:
        "benchmarks/sparks/{model}/checkpoint.tsv"
    wildcard_constraints:
        model=SPARKS_MEMBERS_PATTERN,
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        entry=lambda wildcards: REGISTRY[wildcards.model],
        # Only what a checkpoint's job reads, so that changing how circuits are cut or
        # judged reruns the cheap series step, not every checkpoint.
        sparks={key: SPARKS[key] for key in SPARKS_CHECKPOINT_SETTINGS},
        seed=config["seed"],
    script:
        "../../scripts/sparks/checkpoint.py"


rule sparks_series:
    input:
        checkpoints=lambda wildcards: checkpoint_files(REGISTRY, wildcards.series),
        losses="results/training/{series}/losses.csv",
    output:
        heads="results/sparks/{series}/heads.csv",
        cohorts="results/sparks/{series}/cohorts.csv",
        changes="results/sparks/{series}/changes.csv",
        emergence="results/sparks/{series}/emergence.csv",
        counts="results/sparks/{series}/counts.csv",
        checkpoints="results/sparks/{series}/checkpoints.csv",
    log:
        "logs/sparks/{series}/series.log",
    benchmark:
        "benchmarks/sparks/{series}/series.tsv"
    wildcard_constraints:
        series=SPARKS_SERIES_PATTERN,
    group:
        "series_{series}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        members=lambda wildcards: series_members(REGISTRY, wildcards.series),
        entry=lambda wildcards: REGISTRY[wildcards.series],
        sparks=SPARKS,
        seed=config["seed"],
    script:
        "../../scripts/sparks/series.py"


rule sparks_interventions:
    input:
        base=lambda wildcards: prepared_model(
            series_members(REGISTRY, wildcards.series)[0]
        ),
        final=lambda wildcards: prepared_model(
            series_members(REGISTRY, wildcards.series)[-1]
        ),
        prompts=lambda wildcards: checkpoint_prompts(
            REGISTRY, series_members(REGISTRY, wildcards.series)[-1]
        ),
        changes="results/sparks/{series}/changes.csv",
    output:
        accuracy="results/sparks/{series}/interventions.csv",
        summary="results/sparks/{series}/intervention_summary.csv",
    log:
        "logs/sparks/{series}/interventions.log",
    benchmark:
        "benchmarks/sparks/{series}/interventions.tsv"
    wildcard_constraints:
        series=SPARKS_SERIES_PATTERN,
    group:
        "series_{series}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        sparks=SPARKS,
        seed=config["seed"],
    script:
        "../../scripts/sparks/interventions.py"


rule sparks_claims:
    input:
        claims_file=PAPERS["sparks"].claims_source,
        counts="results/sparks/{series}/counts.csv",
        emergence="results/sparks/{series}/emergence.csv",
        final_summary=lambda wildcards: f"results/sparks/{series_members(REGISTRY, wildcards.series)[-1]}/summary.json",
        interventions=lambda wildcards: interventions_output(REGISTRY, wildcards.series),
    output:
        claims="results/sparks/{series}/claims.csv",
    log:
        "logs/sparks/{series}/claims.log",
    benchmark:
        "benchmarks/sparks/{series}/claims.tsv"
    wildcard_constraints:
        series=SPARKS_SERIES_PATTERN,
    group:
        "series_{series}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        sparks=SPARKS,
        seed=config["seed"],
    script:
        "../../scripts/sparks/claims.py"


rule sparks_notebook:
    input:
        notebook=PAPERS["sparks"].notebook,
        checkpoints=lambda wildcards: checkpoint_files(REGISTRY, wildcards.series),
        tables=expand(
            "results/sparks/{{series}}/{name}.csv",
            name=("checkpoints", "heads", "cohorts", "changes", "emergence", "counts"),
        ),
        interventions=lambda wildcards: interventions_output(REGISTRY, wildcards.series),
        losses="results/training/{series}/losses.csv",
        claims="results/sparks/{series}/claims.csv",
    output:
        **{
            f"{name}_png": report(
                f"results/figures/sparks/{{series}}/{name}.png",
                caption=f"../../report/sparks_{name}.rst",
                category="P4 Emergent heads (Thinking Sparks!)",
                subcategory="{series}",
                labels={"series": "{series}", "figure": label},
            )
            for name, label in SPARKS_FIGURE_LABELS.items()
        },
        **{
            f"{name}_pdf": f"results/figures/sparks/{{series}}/{name}.pdf"
            for name in SPARKS_FIGURE_LABELS
        },
        notebook="results/notebooks/sparks/{series}.ipynb",
    log:
        "logs/notebooks/sparks_{series}.log",
    benchmark:
        "benchmarks/notebooks/sparks_{series}.tsv"
    wildcard_constraints:
        series=SPARKS_SERIES_PATTERN,
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "series": wildcards.series,
            "results_dir": f"results/sparks/{wildcards.series}",
            "member_dirs": [
                f"results/sparks/{member}"
                for member in series_members(REGISTRY, wildcards.series)
            ],
            "losses_path": input.losses,
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["sparks"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
