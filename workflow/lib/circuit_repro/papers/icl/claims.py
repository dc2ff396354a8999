"""Measurements of the ICL paper's claims (``claims.yaml``), judged by the shared policy.

This module only measures: from each task's contrasts (``contrasts.csv``, written by
:func:`circuit_repro.papers.icl.run.contrasts`) it states every claim's estimate, CI and
number of prompts; :func:`circuit_repro.papers.claims.judge` decides every verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pandas as pd

from circuit_repro.papers.claims import Measurement, claims_table, load_claims
from circuit_repro.papers.icl import PAPER

#: Claim id prefix -> the contrast it reads (the task's label set is the id's suffix).
CLAIM_MEASURES = {
    "knockout_xi_si": "knockout_xi_si",
    "knockout_xq_sq": "knockout_xq_sq",
    "knockout_si_yi": "knockout_si_yi",
    "knockout_yi_sq": "knockout_yi_sq",
    "probe_middle": "probe_middle",
    "induction_depth": "induction_depth",
    "correct_induction": "correct_induction",
}


def task_measurements(task: str, contrasts: pd.DataFrame) -> list[Measurement]:
    """One measurement per claim of ``task`` (``icl_sentiment`` -> ids ending ``_sentiment``)."""
    suffix = task.removeprefix("icl_")
    indexed = contrasts.set_index("measure")
    measurements = []
    for prefix, measure in CLAIM_MEASURES.items():
        row = indexed.loc[measure]
        missing = None
        if measure == "correct_induction" and int(row["n"]) == 0:
            missing = "no head counts as an induction head in at least half of the prompts"
        measurements.append(
            Measurement(
                claim_id=f"{prefix}_{suffix}",
                value=float(row["value"]),
                ci_low=float(row["ci_low"]),
                ci_high=float(row["ci_high"]),
                n=int(row["n"]) or None,
                missing=missing,
                note=str(row["note"]) if isinstance(row["note"], str) else "",
                baseline_task=task,
            )
        )
    return measurements


def knockout_note(knockouts: pd.DataFrame, step: str) -> str:
    """Per range: knockout and control accuracy (the table behind a knockout claim)."""
    rows = knockouts[knockouts["step"] == step]
    if rows.empty:
        return ""
    clean = rows["clean_accuracy"].iloc[0]
    ranges = "; ".join(
        f"{r.layers}: {r.knockout_accuracy:.2f} vs control {r.control_accuracy:.2f}"
        for r in rows.itertuples()
    )
    return f"clean accuracy {clean:.2f}; {ranges}"


def icl_claims(
    model: str,
    contrasts: Mapping[str, pd.DataFrame],
    knockouts: Mapping[str, pd.DataFrame],
    baselines: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """The paper's claims table for one model over the analysed tasks
    (:func:`~circuit_repro.papers.claims.claims_table`); ``contrasts`` and ``knockouts``
    are per task."""
    measurements = []
    for task, table in contrasts.items():
        for m in task_measurements(task, table):
            step = m.claim_id.removeprefix("knockout_")[:5]
            if m.claim_id.startswith("knockout_"):
                detail = knockout_note(knockouts[task], step)
                m = dataclasses.replace(m, note=f"{m.note}; {detail}" if detail else m.note)
            measurements.append(m)
    return claims_table(PAPER.name, model, load_claims(PAPER.claims_file), measurements, baselines)
