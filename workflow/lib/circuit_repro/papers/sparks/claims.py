"""Measurements of the sparks paper's claims (``claims.yaml``), judged by the shared
policy (:func:`circuit_repro.papers.claims.judge`).

A post-trained series is judged on the emergent heads and the interventions, gated on
its final checkpoint's accuracy on held-out questions; a series trained from scratch
on repeated tokens on the induction claim, gated on its final checkpoint predicting
the repeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from circuit_repro.engine.behaviour import NEAR_CHANCE_MARGIN
from circuit_repro.engine.stats import bootstrap_ci
from circuit_repro.papers.claims import Measurement, claims_table, load_claims
from circuit_repro.papers.sparks import TASK

#: The from-scratch series' task, as the claims file names it.
REPEATED_TOKENS = "repeated_tokens"
#: Distinct tokens of the repeated sequences the head types are read on.
REPEATED_VOCAB = 200


def checkpoint_baseline(
    values: Sequence[float], chance: float, task: str, samples: int, confidence: float, seed: int
) -> dict[str, Any]:
    """A baseline summary (as the baseline rule writes them) of per-prompt accuracies:
    mean, bootstrap CI, chance and whether the CI comes within the margin of chance."""
    values = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(values, np.mean, samples, confidence, seed)
    return {"task": task, "n": len(values), "accuracy": float(values.mean()),
            "accuracy_ci_low": low, "accuracy_ci_high": high, "chance": chance,
            "near_chance": bool(low <= chance + NEAR_CHANCE_MARGIN)}  # fmt: skip


def _step(value: float) -> str:
    return f"{value:g}" if np.isfinite(value) else "never"


def _row(table: pd.DataFrame, column: str, value: str) -> pd.Series:
    return table.set_index(column).loc[value]


def sparks_claims(
    series: str,
    final_summary: Mapping[str, Any],
    counts: pd.DataFrame,
    emergence: pd.DataFrame,
    interventions: pd.DataFrame | None,
    settings,
) -> pd.DataFrame:
    """The claims table of one series (its measurable claims only)."""
    from circuit_repro.papers.sparks import PAPER

    per_prompt = final_summary["per_prompt"]
    args = (settings.bootstrap_samples, settings.confidence, settings.seed)
    vocab = final_summary.get("repeated_vocab", REPEATED_VOCAB)
    baselines = {
        REPEATED_TOKENS: checkpoint_baseline(
            per_prompt["accuracy_repeat"], 1 / vocab, REPEATED_TOKENS, *args
        )
    }
    measurements = []
    if "correct" in per_prompt:
        baselines[TASK] = checkpoint_baseline(per_prompt["correct"], 0.25, TASK, *args)
        emergent = _row(counts, "measure", "emergent")
        others = ", ".join(
            f"{m} {int(_row(counts, 'measure', m)['value'])}"
            for m in ("base_circuit", "retained", "dropped")
        )
        measurements.append(Measurement(
            "emergent_heads", float(emergent["value"]), float(emergent["ci_low"]),
            float(emergent["ci_high"]), int(emergent["n"]), note=others, baseline_task=TASK,
        ))  # fmt: skip
        if interventions is not None and len(interventions):
            rows = interventions.set_index(["model", "intervention"])
            if ("final", "zero") in rows.index:
                r = rows.loc[("final", "zero")]
                measurements.append(Measurement(
                    "ablation_vs_random", -float(r["difference"]), -float(r["ci_high"]),
                    -float(r["ci_low"]), int(r["n"]),
                    note=f"accuracy {r['clean']:.2f} -> {r['emergent']:.2f} (emergent), "
                    f"{r['random']:.2f} (random mean)", baseline_task=TASK,
                ))  # fmt: skip
            if ("base", "scale_1.3") in rows.index:
                r = rows.loc[("base", "scale_1.3")]
                measurements.append(Measurement(
                    "scale_up_vs_random", float(r["difference"]), float(r["ci_low"]),
                    float(r["ci_high"]), int(r["n"]),
                    note=f"base accuracy {r['clean']:.2f} -> {r['emergent']:.2f} (emergent "
                    f"x1.3), {r['random']:.2f} (random x1.3)", baseline_task=TASK,
                ))  # fmt: skip
    else:
        gap = _row(emergence, "measure", "gap_checkpoints")
        formed = _row(emergence, "measure", "induction_step")["value"]
        dropped = _row(emergence, "measure", "loss_drop_step")["value"]
        measurements.append(Measurement(
            "induction_with_loss_drop", float(gap["value"]), float(gap["ci_low"]),
            float(gap["ci_high"]), int(gap["n"]),
            missing=None if np.isfinite(gap["value"]) else "no induction head or no loss drop",
            note=f"induction head at step {_step(formed)}; in-context gain halfway by step "
            f"{_step(dropped)}",
            baseline_task=REPEATED_TOKENS,
        ))  # fmt: skip
    return claims_table(PAPER.name, series, load_claims(PAPER.claims_file), measurements,
                        baselines)  # fmt: skip
