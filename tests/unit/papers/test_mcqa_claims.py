"""Measurements of the mcqa claims (circuit_repro.papers.mcqa.claims) on planted
per-prompt tables: each statistic says what was planted, with a CI over prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from circuit_repro.papers.mcqa import McqaSettings
from circuit_repro.papers.mcqa.claims import (
    kept_at_rank,
    mcqa_claims,
    position_share_drop,
    top_dla_share,
)

N = 24
rng = np.random.default_rng(0)


def dla_prompts(dominant: bool) -> pd.DataFrame:
    values = rng.normal(0.01, 0.002, size=(N, 200))
    if dominant:
        values[:, 7] += 5.0
    return pd.DataFrame(values, columns=[f"c{i}" for i in range(200)]).assign(direct=0.3)


def compression_prompts(kept: float) -> pd.DataFrame:
    rows = []
    for p in range(N):
        clean, ablated = 8.0 + rng.normal(0, 0.1), 5.0 + rng.normal(0, 0.1)
        for setting, value in (("clean", clean), ("ablated", ablated),
                               ("rank3", ablated + kept * (clean - ablated))):  # fmt: skip
            rows.append(
                {"layer": 2, "head": 1, "setting": setting, "prompt": p, "logit_diff": value}
            )
    return pd.DataFrame(rows)


def enumeration_points(ordered: bool) -> pd.DataFrame:
    rows = []
    for labels in ("clean", "random_letters"):
        for p in range(N):
            for position in range(4):
                centre = position if (labels == "clean" and ordered) else rng.integers(4)
                rows.append({"layer": 2, "head": 1, "labels": labels, "prompt": p,
                             "position": position, "label": "ABCD"[position],
                             "k0": centre + rng.normal(0, 0.05), "k1": rng.normal(0, 0.05),
                             "k2": rng.normal(0, 0.05)})  # fmt: skip
    return pd.DataFrame(rows)


def test_top_dla_share_sees_a_dominant_component():
    statistic, k = top_dla_share(dla_prompts(dominant=True))
    assert k == 2 and statistic(np.arange(N)) > 0.5
    statistic, _ = top_dla_share(dla_prompts(dominant=False))
    assert abs(statistic(np.arange(N))) < 0.05


def test_kept_at_rank_recovers_the_planted_share():
    statistic, n = kept_at_rank(compression_prompts(0.8), 2, 1, 3)
    assert n == N and statistic(np.arange(N)) == pytest.approx(0.3, abs=1e-9)


def test_position_share_drop_is_large_only_when_clean_keys_follow_the_position():
    statistic, n = position_share_drop(enumeration_points(ordered=True), 2, 1)
    assert n == N and statistic(np.arange(N)) > 0.8
    statistic, _ = position_share_drop(enumeration_points(ordered=False), 2, 1)
    assert abs(statistic(np.arange(N))) < 0.2


def test_claims_table_judges_every_claim():
    attention = pd.DataFrame([{"layer": 2, "head": 1, "prompt": p, "correct": 0.6 + rng.normal(0, 0.05),
                               "other": 0.1, "top_is_correct": 1.0} for p in range(N)])  # fmt: skip
    tables = {"dla_prompts": dla_prompts(True), "attention_prompts": attention,
              "compression_prompts": compression_prompts(0.8),
              "enumeration_points": enumeration_points(True)}  # fmt: skip
    summary = {"top_heads": ["a2.h1"], "n_top_components": 1, "dla_share": 0.8,
               "smallest_rank": {"a2.h1": 3}, "compression_share": 0.9,
               "accuracy": 0.9}  # fmt: skip
    baseline = {"task": "mc_categories", "n": N, "accuracy": 0.9, "accuracy_ci_low": 0.8,
                "accuracy_ci_high": 0.97, "chance": 0.25, "near_chance": False}  # fmt: skip
    settings = McqaSettings(bootstrap_samples=200)
    table = mcqa_claims(
        "m", tables, summary, {"mc_categories": baseline}, "mc_categories", settings
    )
    assert list(table["claim_id"]) == [
        "few_output_nodes",
        "correct_letter_heads",
        "low_rank_query_key",
        "enumeration_feature",
    ]
    assert (table["verdict"] == "reproduced").all(), table[["claim_id", "verdict"]]
    assert "at step" not in table["note"].iloc[0]  # analysed as it is: no series
    checkpoints = pd.DataFrame({"step": [60, 0, 120], "accuracy": [0.3, 0.26, 0.9]})
    table = mcqa_claims(
        "m", tables, summary, {"mc_categories": baseline}, "mc_categories", settings, checkpoints
    )
    assert table["note"].iloc[0].endswith("; accuracy 0.26 at step 0, 0.90 here")
    at_chance = dict(baseline, accuracy=0.26, accuracy_ci_low=0.2, near_chance=True)
    table = mcqa_claims(
        "m", tables, summary, {"mc_categories": at_chance}, "mc_categories", settings
    )
    assert table["verdict"].str.startswith("inconclusive").all()


def test_task_baseline_gates_on_the_analysed_prompts():
    from circuit_repro.papers.mcqa.claims import task_baseline

    settings = McqaSettings(bootstrap_samples=200)
    good = task_baseline({"correct": [1.0] * 20 + [0.0] * 4}, "mc_categories", settings)
    assert not good["mc_categories"]["near_chance"]
    chance = task_baseline({"correct": [1.0, 0.0, 0.0, 0.0] * 6}, "mc_categories", settings)
    assert chance["mc_categories"]["near_chance"]
    assert chance["mc_categories"]["accuracy"] == pytest.approx(0.25)
