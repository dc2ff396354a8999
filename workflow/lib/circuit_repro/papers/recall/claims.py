"""Measurements of the recall paper's claims (``claims.yaml``), judged by the shared policy.

From the contrasts of :func:`circuit_repro.papers.recall.analysis.two_by_two` (per
level, bootstrapped over prompt pairs) this module states each claim's estimate;
:func:`circuit_repro.papers.claims.judge` decides every verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from circuit_repro.papers.claims import Measurement, claims_table, load_claims
from circuit_repro.papers.recall import PAPER, TASK

#: Claim id -> the head-level contrast it reads.
HEAD_CLAIMS = {
    "recall_selective": "recall_selective",
    "reasoning_selective": "reasoning_selective",
    "double_dissociation": "double",
    "recall_vs_random": "recall_vs_random",
    "reasoning_vs_random": "reasoning_vs_random",
}


def recall_claims(
    model: str, contrasts: pd.DataFrame, baselines: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """The claims table of one model from the contrasts (``level, measure, value, ci_low,
    ci_high, n``) of :func:`~circuit_repro.papers.recall.analysis.two_by_two`."""
    indexed = contrasts.set_index(["level", "measure"])
    measurements = []
    for claim_id, measure in HEAD_CLAIMS.items():
        row = indexed.loc[("head", measure)]
        others = ", ".join(
            f"{level} {indexed.loc[(level, measure), 'value']:+.3f}"
            for level in ("layer", "neuron")
            if (level, measure) in indexed.index
        )
        measurements.append(
            Measurement(
                claim_id=claim_id,
                value=float(row["value"]),
                ci_low=float(row["ci_low"]),
                ci_high=float(row["ci_high"]),
                n=int(row["n"]),
                note=f"head level; {others}",
                baseline_task=TASK,
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
            baseline_task=TASK,
        )  # fmt: skip
    )
    return claims_table(PAPER.name, model, load_claims(PAPER.claims_file), measurements, baselines)
