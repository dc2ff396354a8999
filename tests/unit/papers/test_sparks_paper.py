"""Heads that emerge in training (Park, Jeong and Kang 2025): circuits from edge scores,
cohorts, the importance change, the emergent-head count with its bootstrap, the
emergence gap and the intervention summary, on planted data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from circuit_repro.papers.sparks.checkpoint import circuit_heads, prune_to_paths
from circuit_repro.papers.sparks.series import (
    EPS,
    cohorts,
    emergence_steps,
    emergent_count_interval,
    importance_change,
    intervention_summary,
    top_emergent,
)

# A two-layer graph without grouped queries: a head's query input is "aL.hH<q>".
FEEDS = {f"a{layer}.h{h}<q>": [f"a{layer}.h{h}"] for layer in range(2) for h in range(2)}
FEEDS |= {"m0": ["m0"], "m1": ["m1"], "logits": ["logits"]}


def test_pruning_keeps_only_edges_on_input_to_logits_paths():
    edges = [
        ("input", "a0.h0<q>"), ("a0.h0", "a1.h1<q>"), ("a1.h1", "logits"),  # a path
        ("input", "a0.h1<q>"),  # a0.h1 reaches nothing
        ("a1.h0", "logits"),  # nothing reaches a1.h0
    ]  # fmt: skip
    assert prune_to_paths(edges, FEEDS) == edges[:3]


def test_circuit_heads_take_the_top_edges_and_normalise_importance():
    upstream = ["input", "a0.h0", "a1.h1", "input", "a1.h0"]
    downstream = ["a0.h0<q>", "a1.h1<q>", "logits", "a0.h1<q>", "logits"]
    scores = np.array([4.0, -3.0, 1.0, 0.5, 0.1])
    heads = circuit_heads(upstream, downstream, scores, n_edges=5, share=0.6, feeds=FEEDS)
    assert heads == pytest.approx({(0, 0): 0.75, (1, 1): 0.25})
    # With fewer edges the path breaks and nothing is left.
    assert circuit_heads(upstream, downstream, scores, 5, 0.4, FEEDS) == {}


def test_cohorts_count_new_and_retained_heads_by_first_appearance():
    circuits = {0: {(0, 0): 1.0}, 10: {(0, 0): 0.5, (1, 1): 0.5},
                20: {(1, 1): 0.4, (1, 0): 0.6}}  # fmt: skip
    table = cohorts(circuits).set_index("step")
    assert list(table["new"]) == [0, 1, 2] and list(table["retained"]) == [1, 1, 0]
    assert table.loc[20, "cohort_10"] == 1 and table.loc[20, "cohort_20"] == 1


def test_importance_change_and_status():
    pre, post = {(0, 0): 0.5, (0, 1): 0.5}, {(0, 1): 0.2, (1, 0): 0.8}
    table = importance_change(pre, post, n_layers=2, n_heads=2).set_index(["layer", "head"])
    assert table.loc[(1, 0), "status"] == "emergent"
    assert table.loc[(1, 0), "E"] == pytest.approx(0.8 / (0.8 + EPS))
    assert table.loc[(0, 0), "status"] == "dropped" and table.loc[(0, 0), "E"] < -0.99
    assert table.loc[(0, 1), "status"] == "retained"
    assert table.loc[(1, 1), "status"] == "absent"
    assert top_emergent(table.reset_index(), 5) == [(1, 0)]


def edges_with_shares(per_prompt_scores: np.ndarray, upstream, downstream):
    edges = pd.DataFrame({"upstream": upstream, "downstream": downstream,
                          "score": per_prompt_scores.sum(0), "n_edges": len(upstream)})  # fmt: skip
    return edges, per_prompt_scores


def test_emergent_count_is_bootstrapped_over_prompts():
    """Base: the path through a0.h0 on every prompt. Final: a second path through a1.h1
    that only some prompts support, so the count is 1 with a CI reaching 0."""
    upstream = ["input", "a0.h0", "input", "a1.h1"]
    downstream = ["a0.h0<q>", "logits", "a1.h1<q>", "logits"]
    n = 12
    base = np.tile([5.0, 5.0, 0.0, 0.0], (n, 1))
    final = np.tile([5.0, 5.0, 0.0, 0.0], (n, 1))
    final[:4, 2:] = 20.0  # a third of the prompts carry a new path, strongly
    count, low, high, draws = emergent_count_interval(
        edges_with_shares(base, upstream, downstream),
        edges_with_shares(final, upstream, downstream),
        share=0.5, feeds=FEEDS, samples=300, confidence=0.95, seed=0,
    )  # fmt: skip
    assert count == 1 and high == 1
    assert draws.min() == 0 and 0.5 < draws.mean() < 1  # resamples without those prompts
    again = emergent_count_interval(
        edges_with_shares(base, upstream, downstream),
        edges_with_shares(final, upstream, downstream), 0.5, FEEDS, 300, 0.95, 0,
    )  # fmt: skip
    assert (again[3] == draws).all()  # seeded


def planted_series(formed: int, dropped: int, n_checkpoints=6, n_prompts=10):
    """Checkpoints at steps 0, 100, ...: the best head's induction score jumps at
    ``formed``, the loss on the repeat falls below the first copy's at ``dropped``
    (indices)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_checkpoints):
        induction = rng.uniform(0, 0.1, size=(n_prompts, 4))
        if i >= formed:
            induction[:, 2] = rng.uniform(0.8, 1.0, size=n_prompts)
        first = rng.uniform(4.9, 5.1, size=n_prompts)
        repeat = first - (0.0 if i < dropped else 3.0)
        out.append({"summary": {"step": 100 * i, "per_prompt": {
            "induction": induction.tolist(), "loss_first": first.tolist(),
            "loss_repeat": repeat.tolist()}}})  # fmt: skip
    return out


def test_emergence_gap_finds_planted_steps():
    table = emergence_steps(planted_series(formed=2, dropped=3), 0.4, 200, 0.95, 0)
    values = table.set_index("measure")["value"]
    assert values["induction_step"] == 200 and values["loss_drop_step"] == 300
    gap = table.set_index("measure").loc["gap_checkpoints"]
    assert gap["value"] == 1 and gap["ci_low"] == 1 and gap["ci_high"] == 1
    never = emergence_steps(planted_series(formed=99, dropped=3), 0.4, 50, 0.95, 0)
    assert np.isnan(never.set_index("measure").loc["gap_checkpoints", "value"])


def test_intervention_summary_pairs_prompts():
    rows = []
    for prompt in range(20):
        rows.append({"model": "final", "intervention": "zero", "set": "none", "draw": 0,
                     "prompt": prompt, "correct": True})  # fmt: skip
        rows.append({"model": "final", "intervention": "zero", "set": "emergent", "draw": 0,
                     "prompt": prompt, "correct": prompt % 2 == 0})  # fmt: skip
        for draw in range(4):
            rows.append({"model": "final", "intervention": "zero", "set": "random",
                         "draw": draw, "prompt": prompt, "correct": True})  # fmt: skip
    summary = intervention_summary(pd.DataFrame(rows), 200, 0.95, 0).iloc[0]
    assert summary["emergent_change"] == -0.5 and summary["random_change"] == 0.0
    assert summary["difference"] == -0.5 and summary["ci_high"] < 0
    empty = intervention_summary(pd.DataFrame(columns=rows[0].keys()), 10, 0.95, 0)
    assert len(empty) == 0 and "difference" in empty.columns
