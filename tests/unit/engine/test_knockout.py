"""Attention-edge knockouts over layer ranges and their random-edge controls (engine.knockout).

The shortcuts of :class:`KnockoutRuns` (start at the first knocked-out layer, compute only
positions from the first knocked-out query, batch prompts of several lengths) are checked
against one plain full forward pass per prompt with the same knockout hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuit_repro.engine.hooks import knock_out_edges
from circuit_repro.engine.knockout import KnockoutRuns, edge_mask, random_edges_like
from circuit_repro.tasks.ioi import generate_ioi


def prompts(loaded, n=5):
    records = generate_ioi(loaded.tokenizer, n_prompts=n, seed=1)
    return [loaded.tokenizer(r["prompt"])["input_ids"] for r in records]


@torch.no_grad()
def full_logits(loaded, ids, plan, token_ids):
    """One full forward of one prompt with ``plan`` ({layer: edges}) knocked out."""
    length = len(ids)
    masks = {layer: edge_mask(edges, length, length) for layer, edges in plan.items()}
    with knock_out_edges(loaded.bridge, masks):
        logits = loaded.hf_model(torch.tensor([ids])).logits[0, -1]
    return logits[token_ids]


def test_no_edges_equals_the_unmodified_model(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    tokens = prompts(loaded)
    token_ids = torch.arange(6).expand(len(tokens), -1)
    runs = KnockoutRuns(loaded, tokens, [len(t) - 1 for t in tokens], start_layers=[0, 1])
    with torch.no_grad():
        plain = torch.stack([loaded.hf_model(torch.tensor([t])).logits[0, -1, :6] for t in tokens])
    torch.testing.assert_close(runs.logits([{}] * len(tokens), token_ids), plain)
    # An empty edge list in every layer is the same as no knockout, exactly.
    n_layers = loaded.n_layers
    empty = runs.logits([{layer: [] for layer in range(n_layers)}] * len(tokens), token_ids)
    torch.testing.assert_close(empty, plain)


def test_suffix_runs_equal_full_forward_passes(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    tokens = prompts(loaded)
    n_layers = loaded.n_layers
    token_ids = torch.arange(8).expand(len(tokens), -1)
    rng = np.random.default_rng(0)
    plans = []
    for ids in tokens:
        last = len(ids) - 1
        # From the last token to two earlier keys, and from a middle token to key 1.
        edges = [(last, 2), (last, 4), (len(ids) // 2, 1)]
        plans.append({layer: edges for layer in range(1, n_layers)})
    runs = KnockoutRuns(loaded, tokens, [len(t) - 1 for t in tokens], start_layers=[1])
    fast = runs.logits(plans, token_ids)
    slow = torch.stack(
        [
            full_logits(loaded, ids, plan, token_ids[0])
            for ids, plan in zip(tokens, plans, strict=True)
        ]
    )
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    # A control with per-layer random edges also matches.
    controls = [
        {
            layer: random_edges_like(edges, len(ids), rng, first_key=1)
            for layer, edges in plan.items()
        }
        for ids, plan in zip(tokens, plans, strict=True)
    ]
    fast = runs.logits(controls, token_ids)
    slow = torch.stack(
        [
            full_logits(loaded, ids, plan, token_ids[0])
            for ids, plan in zip(tokens, controls, strict=True)
        ]
    )
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast, runs.logits([{}] * len(tokens), token_ids))


def test_random_edges_match_counts_per_query_and_are_seeded():
    edges = [(9, 3), (9, 4), (9, 5), (6, 5), (2, 1)]
    first = random_edges_like(edges, 12, np.random.default_rng(7), first_key=1)
    again = random_edges_like(edges, 12, np.random.default_rng(7), first_key=1)
    other = random_edges_like(edges, 12, np.random.default_rng(8), first_key=1)
    assert first == again
    assert first != other
    assert len(first) == len(edges) == len(set(first))
    assert not set(first) & set(edges)
    assert all(1 <= k < q and q >= 2 for q, k in first)
    # Query 2 has no other visible key after key 0 is excluded: its edge goes elsewhere;
    # queries 9 and 6 keep their counts.
    counts = {q: sum(1 for a, _ in first if a == q) for q in (9, 6)}
    assert counts == {9: 3, 6: 1}


def test_random_edges_raise_when_the_prompt_is_too_short():
    with pytest.raises(ValueError, match="too few causal edges"):
        random_edges_like([(2, 1)], 3, np.random.default_rng(0), first_key=1)
    with pytest.raises(ValueError, match="too few causal edges"):
        # Queries before the earliest knocked-out one (5) are never used.
        random_edges_like([(5, k) for k in range(1, 5)], 6, np.random.default_rng(0), first_key=1)
