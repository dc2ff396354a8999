"""Low-rank compression of a head (circuit_repro.engine.lowrank): at full rank the
model is unchanged; at rank r the head's activations lie in the top-r subspace; rank 0
of a head's values equals zero-ablating the head."""

from __future__ import annotations

import torch

from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, ablate, cache_activations
from circuit_repro.engine.lowrank import (
    compressed_logits,
    resid_pre_at,
    singular_basis,
    site_activations,
    site_component,
)


def _prompts():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(5, 200, (5, 8), generator=generator)
    read = torch.tensor([7, 6, 7, 5, 7])
    return tokens, read


def _bases(loaded, tokens, read, layer, head):
    positions = [[int(r)] for r in read]
    everywhere = [list(range(tokens.shape[1]))] * tokens.shape[0]
    bases = {}
    for site, where in (("q", positions), ("k", everywhere)):
        component = site_component(loaded, site, layer, head)
        bases[component] = singular_basis(site_activations(loaded, tokens, component, where))
    return bases


def test_full_rank_compression_reproduces_the_model(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    tokens, read = _prompts()
    layer, head = loaded.n_layers - 1, loaded.n_heads - 1
    bases = _bases(loaded, tokens, read, layer, head)
    assert all(b.shape == (loaded.d_head, loaded.d_head) for b in bases.values())
    clean = logits_at(loaded, tokens, read)
    full = compressed_logits(loaded, tokens, read, bases, rank=loaded.d_head)
    torch.testing.assert_close(full, clean, rtol=1e-5, atol=1e-5)
    # A lower rank changes the head, hence the logits.
    assert not torch.allclose(compressed_logits(loaded, tokens, read, bases, rank=1), clean)


def test_compressed_activations_lie_in_the_top_subspace(tiny_model):
    loaded = tiny_model("tiny-llama")
    tokens, read = _prompts()
    component = site_component(loaded, "q", 1, 0)
    basis = singular_basis(site_activations(loaded, tokens, component, [[int(r)] for r in read]))
    from circuit_repro.engine.hooks import project_onto

    top = basis[:, :2]
    with (
        project_onto(loaded.bridge, {component: top}),
        cache_activations(loaded.bridge, [component.hook_name]) as store,
    ):
        logits_at(loaded, tokens, read)
    queries = store[component.hook_name][:, :, component.index].double()
    outside = queries - queries @ top @ top.T
    assert outside.abs().max() < 1e-5


def test_rank_zero_values_equal_zero_ablating_the_head(tiny_model):
    loaded = tiny_model("tiny-gpt2")
    tokens, read = _prompts()
    component = site_component(loaded, "v", 1, 2)
    basis = torch.eye(loaded.d_head, dtype=torch.float64)
    compressed = compressed_logits(loaded, tokens, read, {component: basis}, rank=0)
    with ablate(loaded.bridge, [Component("head", 1, 2)], "zero"):
        ablated = logits_at(loaded, tokens, read)
    torch.testing.assert_close(compressed, ablated, rtol=1e-5, atol=1e-5)


def test_starting_at_the_heads_layer_gives_the_same_logits(tiny_model, tiny_model_id):
    """The blocks before the compressed head compute what the unmodified run computed,
    so every rank may start from the cached residual stream entering its layer; and
    collecting a site's activations may stop at its layer."""
    loaded = tiny_model(tiny_model_id)
    tokens, read = _prompts()
    layer, head = loaded.n_layers - 1, 0
    bases = _bases(loaded, tokens, read, layer, head)
    entering = resid_pre_at(loaded, tokens, layer, batch_size=2)
    assert entering.shape == (*tokens.shape, loaded.d_model)
    for rank in (0, 1, loaded.d_head):
        from_embedding = compressed_logits(loaded, tokens, read, bases, rank, batch_size=2)
        from_layer = compressed_logits(
            loaded, tokens, read, bases, rank, batch_size=2, resid_pre=entering
        )
        torch.testing.assert_close(from_layer, from_embedding, rtol=1e-6, atol=1e-6)
    component = site_component(loaded, "q", layer, head)
    with cache_activations(loaded.bridge, [component.hook_name]) as store:
        logits_at(loaded, tokens, read)
    full_pass = store[component.hook_name][:, :, component.index]
    everywhere = [list(range(tokens.shape[1]))] * tokens.shape[0]
    stopped = site_activations(loaded, tokens, component, everywhere, batch_size=2)
    expected = full_pass.reshape(-1, loaded.d_head).double()  # batch of 5, not 2
    torch.testing.assert_close(stopped, expected, rtol=1e-5, atol=1e-6)
