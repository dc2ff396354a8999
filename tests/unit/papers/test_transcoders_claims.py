"""The transcoders paper's claim measurements on planted tables: the frontier gap, the
features-vs-neurons and top-vs-random shares, the factorised share, and the claims
table with its gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from circuit_repro.papers.transcoders import TranscodersSettings
from circuit_repro.papers.transcoders.claims import (
    NON_INFERIORITY_MARGIN,
    factorised_share,
    features_minus_neurons,
    frontier_gap,
    top_minus_random,
    transcoders_claims,
)

rng = np.random.default_rng(0)
N = 40


def planted_losses(tc_recovered: float, sae_recovered: float):
    """Per-context losses where zero = 3.0, clean = 2.0 and each dictionary recovers the
    given share; transcoders at L0 10 and 40, SAEs at 20."""
    rows, sweep = [], []
    noise = rng.normal(0, 0.01, N)
    settings = {"clean": 2.0, "zero": 3.0, "tc_a": 3.0 - tc_recovered, "tc_b": 3.0 - tc_recovered,
                "sae_a": 3.0 - sae_recovered}  # fmt: skip
    for name, loss in settings.items():
        rows += [{"setting": name, "context": c, "loss": loss + noise[c]} for c in range(N)]
    for name, kind, l0 in (("tc_a", "transcoder", 10), ("tc_b", "transcoder", 40),
                           ("sae_a", "sae", 20)):  # fmt: skip
        sweep.append({"setting": name, "kind": kind, "l0": l0, "dead_share": 0.01,
                      "fvu": 0.3, "recovered": 1 - (settings[name] - 2.0)})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(sweep)


def test_frontier_gap_is_the_difference_in_loss_recovered_plus_the_margin():
    losses, sweep = planted_losses(0.9, 0.8)
    statistic, n = frontier_gap(losses, sweep)
    assert n == N
    assert statistic(np.arange(N)) == pytest.approx(0.1 + NON_INFERIORITY_MARGIN, abs=1e-9)
    losses, sweep = planted_losses(0.6, 0.8)
    statistic, _ = frontier_gap(losses, sweep)
    assert statistic(np.arange(N)) == pytest.approx(-0.2 + NON_INFERIORITY_MARGIN, abs=1e-9)


def planted_top_k(features_top: float, neurons_top: float, random: float) -> pd.DataFrame:
    """Per-prompt metrics: none = 0, all = 1 (plus noise shared by every set), top-k and
    random sets at the given shares."""
    rows = []
    base = rng.normal(0, 0.05, N)
    for units, top in (("features", features_top), ("neurons", neurons_top)):
        sets = [("none", 0, 0, 0.0), ("all", 100, 0, 1.0), ("top", 5, 0, top)]
        sets += [("random", 5, d, random) for d in range(3)]
        for selection, k, draw, value in sets:
            rows += [{"units": units, "selection": selection, "k": k, "draw": draw,
                      "prompt": p, "metric": value + base[p]} for p in range(N)]  # fmt: skip
    return pd.DataFrame(rows)


def test_top_k_statistics_recover_the_planted_shares():
    table = planted_top_k(0.8, 0.3, 0.1)
    statistic, n = features_minus_neurons(table, 5)
    assert n == N and statistic(np.arange(N)) == pytest.approx(0.5, abs=1e-9)
    statistic, _ = top_minus_random(table, 5)
    assert statistic(np.arange(N)) == pytest.approx(0.7, abs=1e-9)


def planted_connections(noise: float) -> pd.DataFrame:
    rows = []
    for p in range(N):
        for i in range(5):
            factorised = rng.normal()
            rows.append({"prompt": p, "downstream": 0, "upstream": i,
                         "factorised": factorised,
                         "attribution": factorised + rng.normal(0, noise)})  # fmt: skip
    return pd.DataFrame(rows)


def test_factorised_share_is_high_only_when_the_terms_explain_the_attributions():
    statistic, n = factorised_share(planted_connections(0.1))
    assert n == N and statistic(np.arange(N)) > 0.45
    statistic, _ = factorised_share(planted_connections(3.0))
    assert statistic(np.arange(N)) < 0


def test_claims_table_judges_and_gates():
    losses, sweep = planted_losses(0.9, 0.8)
    tables = {"losses": losses, "sweep": sweep, "top_k_prompts": planted_top_k(0.8, 0.3, 0.1),
              "connections": planted_connections(0.1)}  # fmt: skip
    curve = tables["top_k_prompts"].groupby(["units", "selection", "k"])["metric"].mean()
    tables["top_k"] = curve.reset_index().assign(recovered=lambda d: d["metric"])
    settings = TranscodersSettings(bootstrap_samples=200, claim_k=5)
    baseline = {"task": "greater_than", "n": N, "accuracy": 0.95, "accuracy_ci_low": 0.9,
                "accuracy_ci_high": 1.0, "chance": 0.5, "near_chance": False}  # fmt: skip
    table = transcoders_claims("m", tables, {"greater_than": baseline}, settings)
    assert list(table["claim_id"]) == [
        "transcoders_on_par_with_saes",
        "few_features_beat_neurons",
        "top_features_beat_random",
        "attributions_factorize",
    ]
    assert (table["verdict"] == "reproduced").all(), table[["claim_id", "verdict", "rule"]]
    at_chance = dict(baseline, accuracy=0.52, accuracy_ci_low=0.45, near_chance=True)
    table = transcoders_claims("m", tables, {"greater_than": at_chance}, settings)
    verdicts = dict(zip(table["claim_id"], table["verdict"], strict=True))
    assert verdicts["transcoders_on_par_with_saes"] == "reproduced"  # no task to gate it
    assert all(verdicts[c].startswith("inconclusive") for c in list(verdicts)[1:])


def test_a_frontier_against_dictionaries_that_did_not_train_is_inconclusive():
    losses, sweep = planted_losses(0.9, 0.8)
    sweep.loc[sweep["kind"] == "sae", "dead_share"] = 0.97
    tables = {"losses": losses, "sweep": sweep, "top_k_prompts": planted_top_k(0.8, 0.3, 0.1),
              "connections": planted_connections(0.1)}  # fmt: skip
    curve = tables["top_k_prompts"].groupby(["units", "selection", "k"])["metric"].mean()
    tables["top_k"] = curve.reset_index().assign(recovered=lambda d: d["metric"])
    table = transcoders_claims(
        "m", tables, {}, TranscodersSettings(bootstrap_samples=50, claim_k=5)
    )
    row = table.set_index("claim_id").loc["transcoders_on_par_with_saes"]
    assert row["verdict"] == "inconclusive" and "SAEs did not train" in row["note"]
