"""P4. Heads that emerge in training and post-training (Park, Jeong and Kang 2025,
"Thinking Sparks!: Emergent Attention Heads in Reasoning Models During Post Training",
arXiv 2509.25758).

The paper's unit is a checkpoint series, not a model: a base model and its checkpoints
through post-training. Per checkpoint, an EAP-IG circuit (KL objective, top edges,
isolated nodes pruned) gives each head's importance; heads in the post-trained circuit
and not in the base one are *emergent*. Zero-ablating them, and scaling their outputs,
against size-matched random heads tells whether they carry the trained ability. A
series trained from scratch on repeated random tokens adds the known case: induction
heads must form, and the loss on the repeat drops when they do.

- :mod:`.checkpoint`: one checkpoint's circuit, head importances, head-type scores and
  accuracy.
- :mod:`.series`: cohorts across checkpoints, emergent heads and their importance
  change, emergence steps; the interventions on the emergent heads.
- :mod:`.claims`: measurements of the claims in ``claims.yaml``.

This ``__init__`` is torch-free (the workflow imports it to build the DAG).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit_repro.papers.spec import (
    Paper,
    bootstrap_samples_setting,
    confidence_setting,
    seed_setting,
    setting,
)

#: The post-training task (test questions, never trained on).
TASK = "mc_categories"


@dataclass
class SparksSettings:
    """The ``sparks`` config section (defaults are the default run's values)."""

    series: list[str] = setting(
        ["tiny-induction", "smollm2-135m-sft"],
        "Checkpoint series to analyse (ids of config/models.yaml entries with series:). "
        "Series trained from scratch on the induction recipe get the head-type analysis; "
        "the others also the circuits, emergent heads and interventions.",
        items={"type": "string"},
    )
    circuit_prompts: int = setting(
        24, "Task prompts per checkpoint for the EAP-IG circuit.", minimum=2
    )
    ig_steps: int = setting(5, "Integration steps of EAP-IG.", minimum=1)
    circuit_edges: float = setting(
        0.01,
        "Share of the graph's edges kept in a circuit (by |EAP-IG score|), before "
        "isolated nodes are pruned.",
        exclusiveMinimum=0,
        maximum=0.15,  # checkpoint.CANDIDATE_SHARE: circuits come from those edges
    )
    max_intervened_heads: int = setting(
        8,
        "Emergent heads ablated and scaled: the ones whose importance grew most "
        "(the paper intervenes on 5-10).",
        minimum=1,
    )
    scales: list[float] = setting(
        [1.3, 0.5], "Factors the emergent heads' outputs are scaled by.", items={"type": "number"}
    )
    intervention_prompts: int = setting(
        48, "Held-out task prompts the interventions are measured on.", minimum=2
    )
    random_draws: int = setting(
        20, "Size-matched random head sets (seeded, matched per layer).", minimum=2
    )
    head_type_prompts: int = setting(
        32, "Repeated random sequences for the head-type scores.", minimum=2
    )
    head_type_length: int = setting(
        16, "Tokens of a repeated sequence before it repeats.", minimum=2
    )
    head_type_threshold: float = setting(
        0.4,
        "A head is of a type when its score (attention to the type's key) reaches this.",
        exclusiveMinimum=0,
        maximum=1,
    )
    bootstrap_samples: int = bootstrap_samples_setting("prompts")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


#: What one checkpoint's job writes (``results/sparks/<series>@<checkpoint>/``).
CHECKPOINT_FILES = ("heads.csv", "edges.csv", "shares.npy", "summary.json")
#: The settings one checkpoint's job reads (the rest only shape the series step).
CHECKPOINT_SETTINGS = ("circuit_prompts", "ig_steps", "head_type_prompts", "head_type_length")
#: Figure captions of the report, by figure.
FIGURE_LABELS = {
    "cohorts": "new and retained circuit heads per checkpoint",
    "heads": "head frequency and importance change",
    "interventions": "ablation and scaling of emergent heads",
    "emergence": "loss curve and head types across checkpoints",
}


def has_task(registry: Mapping[str, Mapping[str, Any]], series: str) -> bool:
    """Whether a series is analysed on the post-training task (all but series trained
    from scratch on the induction recipe)."""
    return registry[series].get("training", {}).get("recipe") != "induction"


def checkpoint_prompts(registry: Mapping[str, Mapping[str, Any]], model: str) -> list[str]:
    """The task prompts one checkpoint's job reads (none for an induction series)."""
    if not has_task(registry, registry[model]["series"]):
        return []
    return [f"results/tasks/{model}/{TASK}.jsonl"]


def checkpoint_files(registry: Mapping[str, Mapping[str, Any]], series: str) -> list[str]:
    """Every checkpoint job's outputs of a series, member by member in checkpoint order
    (:data:`CHECKPOINT_FILES` each)."""
    from circuit_repro.models.registry import series_members

    return [
        f"results/sparks/{member}/{name}"
        for member in series_members(registry, series)
        for name in CHECKPOINT_FILES
    ]


def interventions_output(registry: Mapping[str, Mapping[str, Any]], series: str) -> list[str]:
    """The interventions' summary of a post-trained series (nothing for the others)."""
    return (
        [f"results/sparks/{series}/intervention_summary.csv"] if has_task(registry, series) else []
    )


def _series(section: Mapping[str, Any]) -> list[str]:
    return list(section.get("series", SparksSettings().series))


PAPER = Paper(
    name="sparks",
    title="Thinking Sparks!: Emergent Attention Heads in Reasoning Models During Post Training",
    citation="Park, Jeong & Kang 2025, arXiv 2509.25758",
    settings=SparksSettings,
    tasks=lambda section: [TASK],
    figures=("cohorts", "heads", "interventions", "emergence"),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={
        "quick": {
            "series": ["tiny-induction-quick", "tiny-llama-sft"],
            "circuit_prompts": 4,
            "ig_steps": 2,
            "circuit_edges": 0.15,
            "random_draws": 3,
            "intervention_prompts": 8,
            "head_type_prompts": 4,
            "head_type_length": 6,
            "head_type_threshold": 0.25,
            "bootstrap_samples": 200,
        }
    },
    units=lambda config: _series(config.get("sparks", {})),
)
