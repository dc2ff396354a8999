"""Measurements of the subspace paper's claims (``claims.yaml``), judged by the shared policy.

This module only measures: from Table 1 (``table.csv``), its contrasts
(``contrasts.csv``) and the fact-editing summary (``facts_summary.csv``) it states, for
every claim, our estimate, its CI, the number of pairs and whether the ordering the
claims file names holds. :func:`circuit_repro.papers.claims.judge` decides every verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from circuit_repro.papers.claims import Measurement, claims_table, load_claims
from circuit_repro.papers.subspace import FACTS_TASK, IOI_TASK, PAPER

#: Value claims read from Table 1: claim id -> (site, intervention, metric).
TABLE_CLAIMS = {
    "mlp_full_fldd": ("mlp", "full", "fldd"),
    "mlp_direction_fldd": ("mlp", "direction", "fldd"),
    "mlp_rowspace_fldd": ("mlp", "rowspace", "fldd"),
    "resid_full_fldd": ("resid", "full", "fldd"),
    "resid_direction_fldd": ("resid", "direction", "fldd"),
    "resid_rowspace_fldd": ("resid", "rowspace", "fldd"),
    "mlp_full_accuracy": ("mlp", "full", "accuracy"),
    "mlp_direction_accuracy": ("mlp", "direction", "accuracy"),
    "mlp_rowspace_accuracy": ("mlp", "rowspace", "accuracy"),
    "resid_full_accuracy": ("resid", "full", "accuracy"),
    "resid_direction_accuracy": ("resid", "direction", "accuracy"),
    "resid_rowspace_accuracy": ("resid", "rowspace", "accuracy"),
    "kernel_inert": ("mlp", "nullspace", "fldd"),
}

#: Direction claims read from the contrasts: claim id -> (site, contrast).
CONTRAST_CLAIMS = {
    "illusion": ("mlp", "direction_minus_rowspace"),
    "mlp_direction_vs_random": ("mlp", "direction_minus_placebo"),
    "resid_direction_vs_random": ("resid", "direction_minus_placebo"),
}

#: Direction claims read from the fact-editing summary: claim id -> measure.
FACT_CLAIMS = {
    "fact_patch_vs_rowspace": "direction_minus_rowspace",
    "fact_edit_held_out": "edit_minus_random_edit",
}


def _orderings(cell) -> dict[str, bool]:
    """Whether each value claim's ``holds`` ordering is true (``cell(site, name, metric)``)."""
    return {
        "mlp_full_fldd": cell("mlp", "full", "fldd") < cell("mlp", "direction", "fldd"),
        "mlp_direction_fldd": cell("mlp", "direction", "fldd") > cell("mlp", "rowspace", "fldd"),
        "mlp_rowspace_fldd": cell("mlp", "rowspace", "fldd") < cell("mlp", "direction", "fldd"),
        "resid_full_fldd": cell("resid", "full", "fldd") > cell("mlp", "full", "fldd"),
        "resid_direction_fldd": cell("resid", "direction", "fldd")
        > cell("resid", "placebo", "fldd"),
        "resid_rowspace_fldd": cell("resid", "rowspace", "fldd")
        >= 0.75 * cell("resid", "direction", "fldd"),
        "mlp_full_accuracy": cell("mlp", "full", "accuracy")
        <= cell("mlp", "direction", "accuracy"),
        "mlp_direction_accuracy": cell("mlp", "direction", "accuracy")
        < cell("resid", "direction", "accuracy"),
        "mlp_rowspace_accuracy": cell("mlp", "rowspace", "accuracy")
        <= cell("mlp", "direction", "accuracy"),
        "resid_full_accuracy": cell("resid", "full", "accuracy") > cell("mlp", "full", "accuracy"),
        "resid_direction_accuracy": cell("resid", "direction", "accuracy")
        > cell("resid", "full", "accuracy"),
        "resid_rowspace_accuracy": cell("resid", "rowspace", "accuracy")
        > cell("mlp", "direction", "accuracy"),
        "kernel_inert": cell("mlp", "nullspace", "fldd") < cell("mlp", "rowspace", "fldd"),
    }


def ioi_measurements(table: pd.DataFrame, contrasts: pd.DataFrame) -> list[Measurement]:
    """Table 1's rows and the contrasts, one measurement per claim."""
    indexed = table.set_index(["site", "intervention"])
    layers = table[table["site"] != "clean"].groupby("site")["layer"].first()
    clean = table[table["site"] == "clean"].iloc[0]

    def cell(site: str, name: str, metric: str) -> float:
        return float(indexed.loc[(site, name), metric])

    holds = _orderings(cell)
    control = (
        f"control MLP {int(layers['control_mlp'])}: 1-D direction FLDD "
        f"{cell('control_mlp', 'direction', 'fldd'):.1f}, row-space part "
        f"{cell('control_mlp', 'rowspace', 'fldd'):.1f}, whole MLP "
        f"{cell('control_mlp', 'full', 'fldd'):.1f}"
        if "control_mlp" in layers
        else "no control MLP"
    )
    measurements = []
    for claim_id, (site, name, metric) in TABLE_CLAIMS.items():
        row = indexed.loc[(site, name)]
        measurements.append(
            Measurement(
                claim_id=claim_id,
                value=float(row[metric]),
                ci_low=float(row[f"{metric}_ci_low"]),
                ci_high=float(row[f"{metric}_ci_high"]),
                n=int(row["n_pairs"]),
                holds=bool(holds[claim_id]),
                note=(
                    f"{site} at layer {int(layers[site])}, {name}: FLDD {row['fldd']:.1f}, "
                    f"accuracy {row['accuracy']:.3f}; clean accuracy "
                    f"{clean['accuracy']:.3f}, clean LD {clean['mean_ld']:.2f}"
                ),
                baseline_task=IOI_TASK,
            )
        )
    indexed_contrasts = contrasts[contrasts["metric"] == "fldd"].set_index(["site", "contrast"])
    for claim_id, (site, contrast) in CONTRAST_CLAIMS.items():
        row = indexed_contrasts.loc[(site, contrast)]
        note = f"{site} at layer {int(layers[site])}, {contrast.replace('_', ' ')} (FLDD points)"
        if claim_id == "illusion":
            note += f"; {control}"
        measurements.append(
            Measurement(
                claim_id=claim_id,
                value=float(row["value"]),
                ci_low=float(row["ci_low"]),
                ci_high=float(row["ci_high"]),
                n=int(row["n_pairs"]),
                note=note,
                baseline_task=IOI_TASK,
            )
        )
    return measurements


def fact_measurements(summary: pd.DataFrame) -> list[Measurement]:
    """The fact-editing contrasts at the first configured layer (the notes give the rest)."""
    if summary.empty:
        return [
            Measurement(
                claim_id=claim_id,
                missing="fewer than 2 fact pairs the model knows in every prompt",
                baseline_task=FACTS_TASK,
            )
            for claim_id in FACT_CLAIMS
        ]
    first = summary["layer"].iloc[0]
    at = summary[summary["layer"] == first].set_index("measure")
    measurements = []
    for claim_id, measure in FACT_CLAIMS.items():
        row = at.loc[measure]
        others = "; ".join(
            f"layer {layer}: {r.value:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            for layer, r in summary[summary["measure"] == measure].set_index("layer").iterrows()
            if layer != first
        )
        rates = (
            f"patch {at.loc['direction', 'value']:.3f}, row-space part "
            f"{at.loc['rowspace', 'value']:.3f}, whole MLP {at.loc['full', 'value']:.3f}, "
            f"edit on held-out {at.loc['held_out_edit', 'value']:.3f}, random edit "
            f"{at.loc['held_out_random_edit', 'value']:.3f}"
        )
        measurements.append(
            Measurement(
                claim_id=claim_id,
                value=float(row["value"]),
                ci_low=float(row["ci_low"]),
                ci_high=float(row["ci_high"]),
                n=int(row["n_pairs"]),
                note=f"layer {first}: {rates}" + (f"; other layers {others}" if others else ""),
                baseline_task=FACTS_TASK,
            )
        )
    return measurements


def subspace_claims(
    model: str,
    table: pd.DataFrame,
    contrasts: pd.DataFrame,
    facts_summary: pd.DataFrame,
    baselines: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """The paper's claims table for one model (:func:`~circuit_repro.papers.claims.claims_table`)."""
    measurements = ioi_measurements(table, contrasts) + fact_measurements(facts_summary)
    return claims_table(PAPER.name, model, load_claims(PAPER.claims_file), measurements, baselines)
