"""Measurements of the circuits unit's claims (``claims.yaml``), judged by the shared
policy (:func:`circuit_repro.papers.claims.judge`): differences of curve areas between
two methods, bootstrapped over the same prompts (:func:`.evaluation.area_difference`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from circuit_repro.papers.circuits.evaluation import area_difference
from circuit_repro.papers.claims import Measurement, claims_table, load_claims

#: Claim suffix -> (method, other, area, sign): the estimate is ``sign * (area(method) -
#: area(other))``, so that positive is the claim's side.
COMPARISONS = {
    "eap_ig_below_eap_cmd": ("eap", "eap-ig", "cmd", 1.0),
    "eap_ig_above_random_cpr": ("eap-ig", "random", "cpr", 1.0),
}


def circuits_claims(
    model: str,
    prompt_metrics: Mapping[str, pd.DataFrame],
    task_models: Mapping[str, str],
    baselines: Mapping[str, Mapping[str, Any]],
    settings,
) -> pd.DataFrame:
    """The claims table of one model: each task's comparisons (``prompt_metrics`` per
    task, as :func:`.evaluation.evaluate_task` wrote them; ``task_models`` names the
    model each task ran on)."""
    from circuit_repro.papers.circuits import PAPER

    claims = load_claims(PAPER.claims_file)
    measurements = []
    for task, table in prompt_metrics.items():
        for suffix, (method, other, area, sign) in COMPARISONS.items():
            claim_id = f"{task}_{suffix}"
            if claim_id not in claims:
                continue
            value, low, high, n = area_difference(
                table, method, other, area, settings.bootstrap_samples, settings.confidence,
                settings.seed,
            )  # fmt: skip
            on = "" if task_models[task] == model else f" on {task_models[task]}"
            measurements.append(
                Measurement(
                    claim_id, sign * value, sign * min(low, high), sign * max(low, high), n,
                    note=f"{area.upper()}({method}) - {area.upper()}({other}){on}",
                    baseline_task=task,
                )
            )  # fmt: skip
    return claims_table(PAPER.name, model, claims, measurements, baselines)
