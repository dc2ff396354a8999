"""P1. Multiple-choice "correct letter" heads (Lieberum, Rahtz, Kramár, Nanda, Irving,
Shah and Mikulik 2023, "Does Circuit Analysis Interpretability Scale? Evidence from
Multiple Choice Capabilities in Chinchilla", arXiv 2307.09458).

The default models answer the letter format at chance, so the default run analyses the
final checkpoint of their post-training series (the training-dynamics paper's
``smollm2-135m-sft``) on held-out questions, and reports the base model's baseline
beside it; a model without such a series is analysed as it is.

- :mod:`.analysis`: direct logit attribution to the correct letter, output-node
  patching, attention of every head to the option labels, low-rank compression of a
  head's queries and keys, the label mutations and the enumeration test, the heads
  across the series' checkpoints.

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

PAPER_NAME = "mcqa"


@dataclass
class McqaSettings:
    """The ``mcqa`` config section (defaults are the default run's values)."""

    task: str = setting(
        "mc_categories",
        "Task analysed: mc_categories (held-out words of the post-training task) or "
        "mcqa (the MCQA task's own questions, for models that answer them unaided).",
        enum=["mc_categories", "mcqa"],
    )
    post_trained: dict[str, str] = setting(
        {"smollm2-135m": "smollm2-135m-sft"},
        "Model -> checkpoint series whose final checkpoint is analysed in its place "
        "(config/models.yaml); models not listed are analysed as they are.",
    )
    prompts: int = setting(48, "Held-out prompts of the analyses.", minimum=4)
    patching_prompts: int = setting(
        32, "Prompts of the output-node patching (one pass per component).", minimum=2
    )
    dla_share: float = setting(
        0.8,
        "Share of the positive DLA the top components must carry.",
        exclusiveMinimum=0,
        maximum=1,
    )
    top_heads: int = setting(
        3, "Correct-letter heads examined (largest output-node patching effect).", minimum=1
    )
    compression_share: float = setting(
        0.9,
        "Share of a head's effect the compressed head must keep.",
        exclusiveMinimum=0,
        maximum=1,
    )
    enumeration_rank: int = setting(
        3, "Rank of the key subspace of the enumeration test.", minimum=1
    )
    bootstrap_samples: int = bootstrap_samples_setting("prompts")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


#: Result tables of one analysed model (``results/mcqa/<model>/<name>.csv``).
TABLES = (
    "dla",
    "patching",
    "attention",
    "compression",
    "mutations",
    "enumeration",
    "dla_prompts",
    "attention_prompts",
    "compression_prompts",
    "enumeration_points",
)
#: Figure captions of the report, by figure.
FIGURE_LABELS = {
    "dla": "direct logit attribution to the correct letter",
    "patching": "output-node patching",
    "attention": "attention of the correct-letter heads",
    "compression": "low-rank compression of queries and keys",
    "mutations": "label mutations and the enumeration test",
    "emergence": "correct-letter heads across post-training",
}


def _section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config.get("mcqa", {})


def analysed_series(config: Mapping[str, Any], model: str) -> str | None:
    """The post-training series analysed in ``model``'s place (None: the model itself)."""
    mapping = _section(config).get("post_trained", McqaSettings().post_trained)
    return mapping.get(model)


def analysed_models(config: Mapping[str, Any]) -> list[str]:
    """The paper's result units: each configured model, or the final checkpoint of its
    post-training series."""
    from circuit_repro.models.registry import load_registry, series_members

    registry = None
    units = []
    for model in config["models"]:
        series = analysed_series(config, model)
        if series is None:
            units.append(model)
            continue
        registry = registry or load_registry()
        if series not in registry:
            raise ValueError(
                f"config: mcqa.post_trained maps {model!r} to {series!r}, which is not in "
                "config/models.yaml"
            )
        units.append(series_members(registry, series)[-1])
    return units


def task_of(config: Mapping[str, Any]) -> str:
    return _section(config).get("task", McqaSettings().task)


PAPER = Paper(
    name=PAPER_NAME,
    title="Does Circuit Analysis Interpretability Scale? Evidence from Multiple Choice "
    "Capabilities in Chinchilla",
    citation="Lieberum, Rahtz, Kramár, Nanda, Irving, Shah & Mikulik 2023, arXiv 2307.09458",
    settings=McqaSettings,
    tasks=lambda section: [section.get("task", McqaSettings().task)],
    figures=tuple(FIGURE_LABELS),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={
        "quick": {
            "post_trained": {"tiny-llama": "tiny-llama-sft"},
            "prompts": 8,
            "patching_prompts": 4,
            "top_heads": 2,
            "bootstrap_samples": 200,
        }
    },
    units=analysed_models,
)
