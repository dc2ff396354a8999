"""Measurements of the mcqa paper's claims (``claims.yaml``), each with a percentile
bootstrap CI over prompts, judged by the shared policy
(:func:`circuit_repro.papers.claims.judge`). Every claim is gated on the analysed
model answering the task (a model at chance makes them inconclusive).

Tables are those of :func:`circuit_repro.papers.mcqa.analysis.analyse`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_repro.engine.stats import estimate_with_interval
from circuit_repro.papers.claims import Measurement, claims_table, load_claims

#: Share of the components the "few output nodes" claim allows (1%, at least one).
TOP_COMPONENT_SHARE = 0.01
#: The rank the paper compresses queries and keys to.
PAPER_RANK = 3
CLAIMS_FILE = Path(__file__).with_name("claims.yaml")


def _with_ci(statistic: Callable[[np.ndarray], float], n: int, settings):
    """The statistic on every prompt and its bootstrap CI over prompts."""
    return estimate_with_interval(
        statistic, n, settings.bootstrap_samples, settings.confidence, settings.seed
    )


def top_dla_share(dla_prompts: pd.DataFrame, share: float = TOP_COMPONENT_SHARE):
    """Statistic over prompt indices: the share of the positive mean DLA that the top
    ``share`` of components carry, minus ``share`` (what an even spread gives)."""
    values = dla_prompts.drop(columns=["direct"], errors="ignore").to_numpy(np.float64)
    n_components = values.shape[1]
    k = max(1, round(share * n_components))

    def statistic(rows: np.ndarray) -> float | None:
        mean = values[rows].mean(0)
        positive = np.sort(mean[mean > 0])[::-1]
        if positive.sum() <= 0:
            return None
        return float(positive[:k].sum() / positive.sum() - k / n_components)

    return statistic, k


def kept_at_rank(compression_prompts: pd.DataFrame, layer: int, head: int, rank: int):
    """Statistic over prompt indices: the share of the head's effect kept at ``rank``
    minus one half (positive: it keeps most of it)."""
    rows = compression_prompts[
        (compression_prompts["layer"] == layer) & (compression_prompts["head"] == head)
    ]
    by = {
        key: group.sort_values("prompt")["logit_diff"].to_numpy()
        for key, group in rows.groupby("setting")
    }
    clean, ablated, compressed = by["clean"], by["ablated"], by[f"rank{rank}"]

    def statistic(idx: np.ndarray) -> float | None:
        effect = clean[idx].mean() - ablated[idx].mean()
        if effect <= 1e-12:
            return None
        return float((compressed[idx].mean() - ablated[idx].mean()) / effect - 0.5)

    return statistic, len(clean)


def position_share_drop(points: pd.DataFrame, layer: int, head: int):
    """Statistic over prompt indices: the key variance explained by ordinal position
    with the usual labels minus with random letters."""
    from circuit_repro.papers.mcqa.analysis import explained_variance

    rows = points[(points["layer"] == layer) & (points["head"] == head)]
    coords = [c for c in rows.columns if c.startswith("k") and c[1:].isdigit()]
    blocks = {
        name: [group[coords].to_numpy(np.float64) for _, group in labelled.groupby("prompt")]
        for name, labelled in rows.groupby("labels")
    }
    n = len(blocks["clean"])
    ordinal = np.arange(len(blocks["clean"][0]))  # a prompt's keys in option order

    def share(name: str, idx: np.ndarray) -> float:
        import torch

        stacked = np.concatenate([blocks[name][i] for i in idx])
        groups = np.tile(ordinal, len(idx)).tolist()
        return explained_variance(torch.from_numpy(stacked), groups)

    def statistic(idx: np.ndarray) -> float:
        return share("clean", idx) - share("random_letters", idx)

    return statistic, n


def task_baseline(summary: Mapping[str, Any], task: str, settings) -> dict[str, Any]:
    """The gate of every claim: the analysed model's accuracy on the prompts analysed
    (chance 1 in 4), as the baseline rule summarises a task."""
    from circuit_repro.papers.sparks.claims import checkpoint_baseline

    return {task: checkpoint_baseline(summary["correct"], 0.25, task,
                                      settings.bootstrap_samples, settings.confidence,
                                      settings.seed)}  # fmt: skip


def mcqa_claims(
    model: str,
    tables: Mapping[str, pd.DataFrame],
    summary: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    task: str,
    settings,
    checkpoints: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The claims table of one analysed model. ``checkpoints`` (the
    ``mcqa_checkpoints`` table) adds the base checkpoint's accuracy to the first note,
    so the chance-level model before post-training stays in view."""
    from circuit_repro.papers.mcqa import PAPER_NAME

    measurements = []
    before = base_accuracy_note(checkpoints, summary)
    statistic, k = top_dla_share(tables["dla_prompts"])
    n = len(tables["dla_prompts"])
    value, low, high = _with_ci(statistic, n, settings)
    measurements.append(Measurement(
        "few_output_nodes", value, low, high, n,
        note=f"top {k} of {tables['dla_prompts'].shape[1] - 1} components carry "
        f"{value + k / (tables['dla_prompts'].shape[1] - 1):.2f} of the positive DLA; "
        f"{summary['n_top_components']} carry {summary['dla_share']:.0%}{before}",
        baseline_task=task,
    ))  # fmt: skip
    layer, head = parse_head(summary["top_heads"][0])
    attention = tables["attention_prompts"]
    top = attention[(attention["layer"] == layer) & (attention["head"] == head)]
    difference = (top["correct"] - top["other"]).to_numpy(np.float64)
    value, low, high = _with_ci(
        lambda idx: float(difference[idx].mean()), len(difference), settings
    )
    measurements.append(Measurement(
        "correct_letter_heads", value, low, high, len(difference),
        note=f"a{layer}.h{head}: attention {top['correct'].mean():.2f} to the correct label, "
        f"{top['other'].mean():.2f} to each other; top key {top['top_is_correct'].mean():.0%}",
        baseline_task=task,
    ))  # fmt: skip
    statistic, n = kept_at_rank(tables["compression_prompts"], layer, head, PAPER_RANK)
    if statistic(np.arange(n)) is None:
        measurements.append(Measurement(
            "low_rank_query_key", missing=f"ablating a{layer}.h{head} does not lower the "
            "logit difference", baseline_task=task,
        ))  # fmt: skip
    else:
        value, low, high = _with_ci(statistic, n, settings)
        smallest = summary["smallest_rank"].get(f"a{layer}.h{head}")
        measurements.append(Measurement(
            "low_rank_query_key", value, low, high, n,
            note=f"a{layer}.h{head} keeps {value + 0.5:.2f} of its effect at rank {PAPER_RANK}; "
            f"{summary['compression_share']:.0%} first at rank {smallest}",
            baseline_task=task,
        ))  # fmt: skip
    statistic, n = position_share_drop(tables["enumeration_points"], layer, head)
    value, low, high = _with_ci(statistic, n, settings)
    measurements.append(Measurement(
        "enumeration_feature", value, low, high, n,
        note=f"a{layer}.h{head}'s rank-3 keys: position explains {value:+.2f} more of their "
        "variance with ABCD labels than with random letters", baseline_task=task,
    ))  # fmt: skip
    return claims_table(PAPER_NAME, model, load_claims(CLAIMS_FILE), measurements, baselines)


def base_accuracy_note(checkpoints: pd.DataFrame | None, summary: Mapping[str, Any]) -> str:
    """``"; accuracy 0.27 at step 0, 0.92 here"`` for a post-training series (empty for
    a model analysed as it is)."""
    if checkpoints is None or checkpoints.empty:
        return ""
    first = checkpoints.sort_values("step").iloc[0]
    return (
        f"; accuracy {first['accuracy']:.2f} at step {int(first['step'])}, "
        f"{summary['accuracy']:.2f} here"
    )


def parse_head(name: str) -> tuple[int, int]:
    """``(layer, head)`` of a head named ``a{L}.h{H}``."""
    layer, head = name.removeprefix("a").split(".h")
    return int(layer), int(head)
