"""Measurements of the reuse paper's claims (``claims.yaml``), judged by the shared policy.

This module only measures: it reads the overlap and intervention tables and states,
for every claim, our estimate, its CI, how many items it rests on and whether the
ordering the claims file names holds. :func:`circuit_repro.papers.claims.judge`
decides every verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from circuit_repro.papers.claims import Measurement, claims_table, load_claims
from circuit_repro.papers.reuse import PAPER, REFERENCE_TASK, TARGET_TASK

#: Claim id of each intervention group, and the heads it is made of, in words.
GROUP_CLAIMS = {
    "all": ("intervention_all", "inhibition or negative-mover"),
    "inhibition": ("intervention_inhibition", "inhibition"),
    "negative mover": ("intervention_negative_mover", "negative-mover"),
}


def overlap_measurements(overlap: pd.DataFrame) -> list[Measurement]:
    """The main overlap and one control claim per configured control task."""
    overall = overlap[overlap["class"] == "all"]
    main_pair = f"{REFERENCE_TASK}|{TARGET_TASK}"
    main = overall[overall["pair"] == main_pair].iloc[0]
    controls = overall[overall["pair"] != main_pair]
    control_high = float(controls["ci_high"].max()) if len(controls) else -np.inf
    measurements = [
        Measurement(
            claim_id="overlap",
            value=float(main["overlap"]),
            ci_low=float(main["ci_low"]),
            ci_high=float(main["ci_high"]),
            n=int(main["n_prompts"]),
            holds=bool(main["ci_low"] > control_high),
            note=f"{int(main['shared'])} of {int(main['union'])} heads shared",
            baseline_task=TARGET_TASK,
        )
    ]
    for row in controls.itertuples():
        control = row.pair.split("|")[1]
        measurements.append(
            Measurement(
                claim_id=f"control_overlap_{control}",
                value=float(row.overlap),
                ci_low=float(row.ci_low),
                ci_high=float(row.ci_high),
                n=int(row.n_prompts),
                holds=bool(row.overlap < main["overlap"]),
                note=f"{int(row.shared)} of {int(row.union)} heads shared",
                baseline_task=control,
            )
        )
    return measurements


def intervention_measurements(groups: pd.DataFrame) -> list[Measurement]:
    """Accuracy after the intervention, per head group of the IOI circuit."""
    before = float(groups.loc[groups["group"] == "none", "accuracy"].iloc[0])
    measurements = []
    for group, (claim_id, heads) in GROUP_CLAIMS.items():
        row = groups[groups["group"] == group].iloc[0]
        if row["n_heads"] == 0:
            measurements.append(
                Measurement(
                    claim_id=claim_id,
                    missing=f"the IOI circuit has no {heads} head",
                    note=f"before {before:.3f} (paper 0.496)",
                    baseline_task=TARGET_TASK,
                )
            )
            continue
        measurements.append(
            Measurement(
                claim_id=claim_id,
                value=float(row["accuracy"]),
                ci_low=float(row["accuracy_ci_low"]),
                ci_high=float(row["accuracy_ci_high"]),
                n=int(row["n_prompts"]),
                holds=bool(row["change_ci_low"] > 0),
                note=(
                    f"before {before:.3f} (paper 0.496); heads {row['heads']}; change CI "
                    f"[{row['change_ci_low']:+.3f}, {row['change_ci_high']:+.3f}]"
                ),
                baseline_task=TARGET_TASK,
            )
        )
    return measurements


def correlation_measurement(correlation: Mapping[str, Any]) -> Measurement:
    """Spearman correlation of intervention and path-patching effects over heads."""
    rho = correlation.get("spearman", np.nan)
    n_heads = int(correlation.get("n_heads", 0))
    if not np.isfinite(rho):
        return Measurement(
            claim_id="intervention_vs_path_patching",
            missing=f"no correlation: the effects of the {n_heads} heads are constant",
            baseline_task=TARGET_TASK,
        )
    p_value = correlation["p_value"]
    return Measurement(
        claim_id="intervention_vs_path_patching",
        value=float(rho),
        ci_low=float(correlation["ci_low"]),
        ci_high=float(correlation["ci_high"]),
        n=n_heads,
        holds=bool(rho > 0 and p_value < 0.05),
        note=f"p = {p_value:.3g} over {n_heads} heads",
        baseline_task=TARGET_TASK,
    )


def reuse_claims(
    model: str,
    overlap: pd.DataFrame,
    groups: pd.DataFrame,
    correlation: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """Rule ``reuse_claims``: every claim of ``claims.yaml`` measured and judged.

    Args:
        baselines: ``{task: baseline summary JSON}`` of the model's tasks.
    """
    measurements = [
        *overlap_measurements(overlap),
        *intervention_measurements(groups),
        correlation_measurement(correlation),
    ]
    return claims_table(PAPER.name, model, load_claims(PAPER.claims_file), measurements, baselines)
