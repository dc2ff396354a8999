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

from dataclasses import dataclass

from circuit_repro.papers.spec import (
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
