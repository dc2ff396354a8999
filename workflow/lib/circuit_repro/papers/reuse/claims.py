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


def _interval(value: float, low: float, high: float) -> str:
    """``0.500 [0.400, 0.571]``; "none" where a number is missing (never "nan")."""

    def text(number: float) -> str:
        return f"{number:.3f}" if number is not None and np.isfinite(number) else "none"

    return f"{text(value)} [{text(low)}, {text(high)}]"


def _other_overlaps(overall: pd.DataFrame, pair: str) -> str:
    """The pair's overlap in every position mode and depth that is not the claim's."""
    rows = overall[(overall["pair"] == pair) & ~overall["primary"].astype(bool)]
    return "; ".join(
        f"{row.positions} positions, depth {row.depth}: "
        f"{_interval(row.overlap, row.ci_low, row.ci_high)}"
        for row in rows.itertuples()
    )


def overlap_measurements(overlap: pd.DataFrame) -> list[Measurement]:
    """The main overlap and one control claim per configured control task, in the
    configured position mode at full depth; the notes give the other modes and depths."""
    overall_all = overlap[overlap["class"] == "all"]
    overall = overall_all[overall_all["primary"].astype(bool)]
    main_pair = f"{REFERENCE_TASK}|{TARGET_TASK}"
    main = overall[overall["pair"] == main_pair].iloc[0]
    where = f"{main['positions']} positions, depth {main['depth']}"
    controls = overall[overall["pair"] != main_pair]
    control_high = float(controls["ci_high"].max()) if len(controls) else -np.inf
    others = _other_overlaps(overall_all, main_pair)
    measurements = [
        Measurement(
            claim_id="overlap",
            value=float(main["overlap"]),
            ci_low=float(main["ci_low"]),
            ci_high=float(main["ci_high"]),
            n=int(main["n_prompts"]),
            holds=bool(main["ci_low"] > control_high),
            note=(
                f"{int(main['shared'])} of {int(main['union'])} heads shared ({where})"
                + (f"; {others}" if others else "")
            ),
            baseline_task=TARGET_TASK,
        )
    ]
    for row in controls.itertuples():
        control = row.pair.split("|")[1]
        others = _other_overlaps(overall_all, row.pair)
        measurements.append(
            Measurement(
                claim_id=f"control_overlap_{control}",
                value=float(row.overlap),
                ci_low=float(row.ci_low),
                ci_high=float(row.ci_high),
                n=int(row.n_prompts),
                holds=bool(row.overlap < main["overlap"]),
                note=(
                    f"{int(row.shared)} of {int(row.union)} heads shared ({where})"
                    + (f"; {others}" if others else "")
                ),
                baseline_task=control,
            )
        )
    return measurements


def _other_target_note(groups: pd.DataFrame, group: str) -> str:
    other = groups[(groups["target_variant"] == "other") & (groups["group"] == group)]
    if other.empty:
        return ""
    row = other.iloc[0]
    return (
        f"; with the negative movers' other target ({row['targets']}): accuracy "
        f"{_interval(row['accuracy'], row['accuracy_ci_low'], row['accuracy_ci_high'])}"
    )


def intervention_measurements(groups: pd.DataFrame) -> list[Measurement]:
    """Accuracy after the intervention, per head group of the IOI circuit."""
    configured = groups[groups["target_variant"] == "configured"]
    before = float(configured.loc[configured["group"] == "none", "accuracy"].iloc[0])
    measurements = []
    for group, (claim_id, heads) in GROUP_CLAIMS.items():
        row = configured[configured["group"] == group].iloc[0]
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
                    f"before {before:.3f} (paper 0.496); heads {row['heads']} (targets "
                    f"{row['targets']}); change CI [{row['change_ci_low']:+.3f}, "
                    f"{row['change_ci_high']:+.3f}]; 95th percentile of random heads' "
                    f"gains {row['random_layer_p95']:+.3f} (same layers), "
                    f"{row['random_any_p95']:+.3f} (anywhere) vs this gain "
                    f"{row['gain']:+.3f}" + _other_target_note(groups, group)
                ),
                baseline_task=TARGET_TASK,
            )
        )
    return measurements


def random_control_measurement(groups: pd.DataFrame) -> Measurement:
    """The "all" group's gain minus the 95th percentile of random heads' gains."""
    row = groups[(groups["target_variant"] == "configured") & (groups["group"] == "all")].iloc[0]
    if row["n_heads"] == 0:
        return Measurement(
            claim_id="intervention_vs_random",
            missing="the IOI circuit has no inhibition or negative-mover head",
            baseline_task=TARGET_TASK,
        )
    return Measurement(
        claim_id="intervention_vs_random",
        value=float(row["margin"]),
        ci_low=float(row["margin_ci_low"]),
        ci_high=float(row["margin_ci_high"]),
        n=int(row["n_prompts"]),
        note=(
            f"gain {row['gain']:+.3f} of heads {row['heads']}; 95th percentile of random "
            f"heads' gains {row['random_layer_p95']:+.3f} (same layers; the gain beats "
            f"{row['random_layer_below']:.0%} of draws), {row['random_any_p95']:+.3f} "
            f"(anywhere; beats {row['random_any_below']:.0%}); the margin is taken "
            "against the larger"
        ),
        baseline_task=TARGET_TASK,
    )


def _rho(entry: Mapping[str, Any]) -> str:
    rho = entry.get("spearman")
    if rho is None or not np.isfinite(rho):
        return f"none ({entry.get('n_heads', 0)} heads, effects constant)"
    return (
        f"{_interval(rho, entry['ci_low'], entry['ci_high'])}, p = {entry['p_value']:.3g}, "
        f"{entry['n_heads']} heads"
    )


def correlation_measurement(correlation: Mapping[str, Any]) -> Measurement:
    """Spearman correlation of intervention and path-patching effects over the stage-2
    heads; the note gives stage 1 with and without movers."""
    stage2 = correlation.get("stage2", {})
    rho = stage2.get("spearman")
    n_heads = int(stage2.get("n_heads", 0))
    others = (
        f"stage 1: {_rho(correlation.get('stage1', {}))}; stage 1 without movers: "
        f"{_rho(correlation.get('stage1_without_movers', {}))}"
    )
    if rho is None or not np.isfinite(rho):
        return Measurement(
            claim_id="intervention_vs_path_patching",
            missing=f"no correlation over stage-2 heads: {_rho(stage2)}",
            note=others,
            baseline_task=TARGET_TASK,
        )
    p_value = stage2["p_value"]
    return Measurement(
        claim_id="intervention_vs_path_patching",
        value=float(rho),
        ci_low=float(stage2["ci_low"]),
        ci_high=float(stage2["ci_high"]),
        n=n_heads,
        holds=bool(rho > 0 and p_value < 0.05),
        note=f"stage 2: p = {p_value:.3g} over {n_heads} heads; {others}",
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
        random_control_measurement(groups),
        correlation_measurement(correlation),
    ]
    return claims_table(PAPER.name, model, load_claims(PAPER.claims_file), measurements, baselines)
