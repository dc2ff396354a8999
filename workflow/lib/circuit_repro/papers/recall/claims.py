"""Measurements of the recall paper's claims (``claims.yaml``), judged by the shared policy.

From the contrasts of :func:`circuit_repro.papers.recall.analysis.two_by_two` (per
level, bootstrapped over prompt pairs) this module states each claim's estimate;
:func:`circuit_repro.papers.claims.judge` decides every verdict. A claim about one
family's circuit is gated on that family's own baseline (:func:`family_baselines`): a
model that cannot tell the referent's city from the other city in the context has no
reasoning for a circuit to carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from circuit_repro.engine.behaviour import summarize_behaviour
from circuit_repro.papers.claims import Measurement, claims_table, load_claims
from circuit_repro.papers.recall import FAMILIES, PAPER, TASK

#: Claim id -> the head-level contrast it reads.
HEAD_CLAIMS = {
    "recall_selective": "recall_selective",
    "reasoning_selective": "reasoning_selective",
    "double_dissociation": "double",
    "recall_vs_random": "recall_vs_random",
    "reasoning_vs_random": "reasoning_vs_random",
}


def family_task(family: str) -> str:
    """The name a family's own baseline goes by in the claims file (``tasks:``)."""
    return f"{TASK}/{family}"


def family_baselines(
    scores: pd.DataFrame,
    families: Mapping[int, str],
    model: str,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Each family's baseline apart, ``{recall_reasoning/<family>: summary}``, from the
    baseline rule's per-prompt scores of the whole task.

    The accuracy here is pairwise, chance 0.5: the answer against the family's
    distractor, a city from the context (for reasoning, the other person's city). A
    model that has learnt "the answer is a city from the context" but not which one
    scores 1/2 over the three candidates, well above their 1/3, while it does none of
    the reasoning; so the three-way chance would not gate reasoning claims.

    Args:
        scores: :func:`~circuit_repro.engine.behaviour.score_records` rows (``id``,
            ``pairwise_correct``, ...).
        families: Record id -> ``recall`` or ``reasoning``.
    """
    scores = scores.assign(family=scores["id"].map(families))
    out = {}
    for family in FAMILIES:
        rows = scores[scores["family"] == family]
        pairwise = rows.assign(candidate_correct=rows["pairwise_correct"], chance=0.5)
        out[family_task(family)] = summarize_behaviour(
            pairwise, family_task(family), model, n_resamples, confidence, seed
        )
    return out


def recall_claims(
    model: str, contrasts: pd.DataFrame, baselines: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """The claims table of one model from the contrasts (``level, measure, value, ci_low,
    ci_high, n``) of :func:`~circuit_repro.papers.recall.analysis.two_by_two`; the
    baselines hold the task's and each family's (:func:`family_baselines`)."""
    indexed = contrasts.set_index(["level", "measure"])
    measurements = []
    for claim_id, measure in HEAD_CLAIMS.items():
        row = indexed.loc[("head", measure)]
        others = ", ".join(
            f"{level} {indexed.loc[(level, measure), 'value']:+.3f}"
            for level in ("layer", "neuron")
            if (level, measure) in indexed.index
        )
        family = "recall" if claim_id.startswith("recall") else "reasoning"
        measurements.append(
            Measurement(
                claim_id=claim_id,
                value=float(row["value"]),
                ci_low=float(row["ci_low"]),
                ci_high=float(row["ci_high"]),
                n=int(row["n"]),
                note=f"head level; {others}",
                baseline_task=family_task(family),
            )  # fmt: skip
        )
    row = indexed.loc[("head_vs_neuron", "interaction_difference")]
    head = float(indexed.loc[("head", "interaction"), "value"])
    neuron = float(indexed.loc[("neuron", "interaction"), "value"])
    measurements.append(
        Measurement(
            claim_id="neurons_weaker",
            value=float(row["value"]),
            ci_low=float(row["ci_low"]),
            ci_high=float(row["ci_high"]),
            n=int(row["n"]),
            note=f"interaction: heads {head:+.3f}, neurons {neuron:+.3f}",
            baseline_task=family_task("reasoning"),
        )  # fmt: skip
    )
    return claims_table(PAPER.name, model, load_claims(PAPER.claims_file), measurements, baselines)
