"""One ICL task on one model: the k-shot curve, steps 1-3 and the knockouts, and the
contrasts the claims read (Cho et al. 2024)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuit_repro.engine.stats import bootstrap, percentile_interval
from circuit_repro.papers.icl import STEPS, IclSettings
from circuit_repro.papers.icl.curve import k_shot_curve
from circuit_repro.papers.icl.knockouts import run_knockouts
from circuit_repro.papers.icl.states import (
    PROBE_METHODS,
    collect,
    count_heads,
    depth_centre,
    label_preference,
    merge_alignment,
    probe_forerunners,
)
from circuit_repro.tasks.records import TaskRecord

#: Output tables of one task, by name (``results/icl/<model>/<task>/<name>.csv``).
TABLES = (
    "curve",
    "probes",
    "merge",
    "heads",
    "head_counts",
    "knockouts",
    "knockout_prompts",
    "contrasts",
)


@dataclass
class IclTaskResult:
    curve: pd.DataFrame
    probes: pd.DataFrame
    merge: pd.DataFrame
    heads: pd.DataFrame
    head_counts: pd.DataFrame
    knockouts: pd.DataFrame
    knockout_prompts: pd.DataFrame
    contrasts: pd.DataFrame


def _contrast(measure: str, per_prompt: np.ndarray, settings: IclSettings, note: str) -> dict:
    """Mean of a per-prompt quantity with a bootstrap CI over prompts."""
    values = np.asarray(per_prompt, dtype=np.float64)
    if values.size == 0:
        return {"measure": measure, "value": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                "n": 0, "note": note}  # fmt: skip
    samples = bootstrap(
        lambda r: values[r].mean(), [len(values)], settings.bootstrap_samples, settings.seed
    )
    low, high = percentile_interval(samples, settings.confidence)
    return {"measure": measure, "value": float(values.mean()), "ci_low": low, "ci_high": high,
            "n": int(values.size), "note": note}  # fmt: skip


def contrasts(
    n_layers: int,
    probe_per_prompt: np.ndarray,
    counts: dict[str, np.ndarray],
    preference: np.ndarray,
    knockout_prompts: pd.DataFrame,
    settings: IclSettings,
) -> pd.DataFrame:
    """The quantities the claims judge, each with a CI over prompts.

    - ``knockout_<step>``: control minus knockout accuracy, averaged over the ranges of
      layers (paired per prompt);
    - ``probe_middle``: linear-probe accuracy minus the shuffled-label probe's, averaged
      over the layers from the middle of depth on;
    - ``induction_depth``: depth centre of induction-head counts minus that of
      forerunner-token-head counts (fractions of depth);
    - ``correct_induction``: the induction heads' attention per same-label
      demonstration label minus per other-label one.
    """
    rows = []
    measured = knockout_prompts[knockout_prompts["variant"] != "clean"]
    for step in STEPS:
        wide = (
            measured[measured["step"] == step]
            .pivot_table(
                index="id", columns=["variant", "range_index"], values="correct", aggfunc="first"
            )
            .astype(float)
        )
        drop = (wide["control"] - wide["knockout"]).mean(axis=1).to_numpy()
        rows.append(_contrast(f"knockout_{step}", drop, settings,
                              f"{wide['knockout'].shape[1]} ranges of layers"))  # fmt: skip
    middle = slice(n_layers // 2, n_layers)
    linear, shuffled = PROBE_METHODS.index("linear"), PROBE_METHODS.index("linear_shuffled")
    gap = (probe_per_prompt[:, middle, linear] - probe_per_prompt[:, middle, shuffled]).mean(1)
    rows.append(_contrast("probe_middle", gap, settings, f"layers {n_layers // 2}-{n_layers - 1}"))
    induction, forerunner = counts["induction"], counts["forerunner_token"]
    n = len(induction)
    samples = bootstrap(
        lambda r: depth_centre(induction[r]) - depth_centre(forerunner[r]),
        [n], settings.bootstrap_samples, settings.seed,
    )  # fmt: skip
    samples = samples[np.isfinite(samples)]
    value = depth_centre(induction) - depth_centre(forerunner)
    low, high = (
        percentile_interval(samples, settings.confidence) if samples.size else (np.nan, np.nan)
    )
    rows.append(
        {"measure": "induction_depth", "value": value, "ci_low": low, "ci_high": high, "n": n,
         "note": f"induction heads centred at {depth_centre(induction):.2f} of depth, "
                 f"forerunner-token heads at {depth_centre(forerunner):.2f}"}
    )  # fmt: skip
    rows.append(_contrast("correct_induction", preference, settings,
                          "per-demonstration attention, same label minus other label"))  # fmt: skip
    return pd.DataFrame(rows)


def run_task(loaded, records: Sequence[TaskRecord], settings: IclSettings) -> IclTaskResult:
    """Everything the paper measures on one ICL task from its data set's ``records``
    (their label set, ``sentiment`` or ``topic``, also draws the curve's prompts)."""
    icl_task = records[0].fields["icl_task"]
    ci = {"bootstrap_samples": settings.bootstrap_samples, "confidence": settings.confidence}
    curve = k_shot_curve(
        loaded, icl_task, settings.k_max, settings.curve_prompts, settings.seed,
        settings.batch_size, **ci,
    )  # fmt: skip
    # The k of the task's own prompts, which every other analysis reads.
    curve["analysed"] = curve["k"] == int(records[0].fields["k_shot"])
    states = collect(loaded, records, settings.batch_size)
    probes, probe_per_prompt = probe_forerunners(
        states, settings.probe_folds, settings.probe_ridge, settings.seed, **ci
    )
    merge = merge_alignment(states, settings.neighbours, settings.seed, **ci)
    heads, head_counts, counts = count_heads(states, settings.head_threshold, settings.seed, **ci)
    preference = label_preference(states, heads)
    knockout_prompts, knockouts = run_knockouts(
        loaded, records[: settings.knockout_prompts], settings
    )
    table = contrasts(
        loaded.n_layers, probe_per_prompt, counts, preference, knockout_prompts, settings
    )
    return IclTaskResult(
        curve, probes, merge, heads, head_counts, knockouts, knockout_prompts, table
    )
