"""Structured ablations of component sets (engine.ablation), checked against one plain
forward pass per set."""

from __future__ import annotations

import pytest
import torch

from circuit_repro.engine.ablation import ablated_logits, ablation_hits
from circuit_repro.engine.hooks import Component, ablate, cache_activations, scale


def same_length_tokens(loaded, n=6, length=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, loaded.tokenizer.vocab_size - 5, (n, length), generator=generator)


def test_empty_set_changes_nothing_and_sets_match_plain_passes(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    tokens = same_length_tokens(loaded)
    reference = same_length_tokens(loaded, n=10, seed=1)
    reads = torch.full((tokens.shape[0],), tokens.shape[1] - 1)
    ids = torch.arange(4).expand(tokens.shape[0], -1)
    last = loaded.n_layers - 1
    sets = [
        [],
        [Component("head", last, 0), Component("head", last, 1)],
        [Component("mlp_out", 0)],
        [Component("head", 0, 1), Component("mlp_out", last)],
    ]
    fast = ablated_logits(loaded, tokens, reads, ids, sets, "mean", reference, token_budget=64)
    with torch.no_grad():
        plain = loaded.hf_model(tokens).logits[:, -1, :4]
        torch.testing.assert_close(fast[0], plain, atol=1e-5, rtol=1e-5)
        names = sorted({c.hook_name for s in sets for c in s})
        with cache_activations(loaded.bridge, names) as cached:
            loaded.bridge(reference)
        for i, components in enumerate(sets[1:], start=1):
            with ablate(loaded.bridge, components, "mean", cached):
                expected = loaded.hf_model(tokens).logits[:, -1, :4]
            torch.testing.assert_close(fast[i], expected, atol=1e-4, rtol=1e-4)
            assert not torch.allclose(fast[i], plain)
    hits = ablation_hits(fast, torch.zeros(tokens.shape[0], dtype=torch.long))
    assert hits.shape == (len(sets), tokens.shape[0])


@pytest.mark.parametrize("factor", [1.3, 0.5, 0.0])
def test_scaled_sets_match_plain_passes(tiny_model, factor):
    """Scaling head outputs (Park et al. 2025) stacked like ablations equals one plain
    pass per set with the outputs scaled; factor 0 is zero ablation."""
    loaded = tiny_model("tiny-llama")
    tokens = same_length_tokens(loaded)
    reads = torch.full((tokens.shape[0],), tokens.shape[1] - 1)
    ids = torch.arange(4).expand(tokens.shape[0], -1)
    sets = [[], [Component("head", 0, 1), Component("head", 1, 2)], [Component("head", 1, 0)]]
    fast = ablated_logits(loaded, tokens, reads, ids, sets, "scale", factor=factor,
                          token_budget=64)  # fmt: skip
    with torch.no_grad():
        for i, components in enumerate(sets):
            with scale(loaded.bridge, components, factor):
                expected = loaded.hf_model(tokens).logits[:, -1, :4]
            torch.testing.assert_close(fast[i], expected, atol=1e-4, rtol=1e-4)
    zero = ablated_logits(loaded, tokens, reads, ids, sets, "zero", token_budget=64)
    if factor == 0.0:
        torch.testing.assert_close(fast, zero, atol=1e-5, rtol=1e-5)
