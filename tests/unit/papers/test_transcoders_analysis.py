"""The transcoders paper's analyses on tiny random models: splicing a perfect transcoder
(a ReLU MLP written as a dictionary) leaves the next-token loss unchanged; keeping every
unit reproduces the unmodified metric and keeping none the all-mean one; the factorised
attribution is the direct path with the norm's scale frozen (checked against the exact
gradient); the top-activating contexts are the largest activations."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from circuit_repro.engine.dictionary import SparseDictionary
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import cache_activations, with_hooks
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.papers.transcoders.analysis import (
    GreaterThanBatch,
    UnitSpace,
    choose_layer,
    feature_connections,
    kept_unit_metric,
    next_token_losses,
    probability_difference,
    top_activating_contexts,
    unit_attributions,
)


def _batch(n: int = 6, length: int = 9, seed: int = 0) -> GreaterThanBatch:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 200, (n, length), generator=generator)
    read = torch.full((n,), length - 1)
    read[::2] = length - 3  # some prompts are shorter (right padding)
    ids = torch.arange(10, 19).repeat(n, 1)
    signs = torch.tensor([1.0] * 4 + [-1.0] * 5).repeat(n, 1)
    return GreaterThanBatch(tokens, read, ids, signs)


def _random_transcoder(loaded, seed: int = 0, width: int = 96) -> SparseDictionary:
    generator = torch.Generator().manual_seed(seed)
    d = loaded.d_model
    dictionary = SparseDictionary(d, d, width, tied_bias=False, kind="transcoder")
    with torch.no_grad():
        dictionary.W_enc.copy_(torch.randn(d, width, generator=generator) / d**0.5)
        dictionary.b_enc.copy_(torch.randn(width, generator=generator) * 0.1)
        dictionary.W_dec.copy_(torch.randn(width, d, generator=generator) / width**0.5)
        dictionary.b_out.copy_(torch.randn(d, generator=generator) * 0.01)
        dictionary.b_in.zero_()
    return dictionary


@pytest.fixture(scope="module")
def relu_gpt2():
    """A tiny GPT-2 whose MLPs use ReLU, so that an MLP is exactly a transcoder."""
    loaded = load_bridge(ensure_prepared("tiny-gpt2"))
    for block in loaded.hf_model.transformer.h:
        block.mlp.act = torch.nn.ReLU()
    return loaded


def test_splicing_a_perfect_transcoder_leaves_the_loss_unchanged(relu_gpt2):
    layer = 1
    mlp = relu_gpt2.hf_model.transformer.h[layer].mlp
    # GPT-2's Conv1D stores weights as [in, out]: c_fc is W_enc, c_proj is W_dec.
    width, d = mlp.c_fc.weight.shape[1], relu_gpt2.d_model
    perfect = SparseDictionary(d, d, width, tied_bias=False, kind="transcoder")
    with torch.no_grad():
        perfect.W_enc.copy_(mlp.c_fc.weight)
        perfect.b_enc.copy_(mlp.c_fc.bias)
        perfect.W_dec.copy_(mlp.c_proj.weight)
        perfect.b_out.copy_(mlp.c_proj.bias)
        perfect.b_in.zero_()
    contexts = torch.randint(5, 200, (5, 12), generator=torch.Generator().manual_seed(3))
    losses = next_token_losses(
        relu_gpt2, contexts, layer,
        {"perfect": ("transcoder", perfect), "zero": ("zero", None),
         "random": ("transcoder", _random_transcoder(relu_gpt2))},
    )  # fmt: skip
    by = losses.pivot(index="context", columns="setting", values="loss")
    torch.testing.assert_close(
        torch.tensor(by["perfect"].to_numpy()), torch.tensor(by["clean"].to_numpy()),
        rtol=0, atol=1e-5,
    )  # fmt: skip
    assert not torch.allclose(torch.tensor(by["zero"].to_numpy()), torch.tensor(by["clean"]))
    assert not torch.allclose(torch.tensor(by["random"].to_numpy()), torch.tensor(by["clean"]))


@pytest.mark.parametrize("kind", ["features", "neurons"])
def test_keeping_every_unit_is_the_unmodified_run_and_none_the_mean(
    tiny_model, tiny_model_id, kind
):
    loaded = tiny_model(tiny_model_id)
    batch, layer = _batch(), loaded.n_layers - 1
    transcoder = _random_transcoder(loaded)
    space = UnitSpace(kind, layer, transcoder if kind == "features" else None)
    unit_attributions(loaded, space, batch)  # sets the means
    n_units = space.means.shape[0]
    masks = torch.stack([torch.ones(n_units), torch.zeros(n_units)])
    kept = kept_unit_metric(loaded, space, batch, masks)
    with torch.no_grad(), with_hooks(loaded.bridge, space.hooks(lambda units: units)):
        unmodified = probability_difference(logits_at(loaded, batch.tokens, batch.read), batch)
    torch.testing.assert_close(kept[0], unmodified, rtol=0, atol=1e-5)
    rows = torch.arange(len(batch))

    def to_mean(units):
        units = units.clone()
        units[rows, batch.read] = space.means.to(units.dtype)
        return units

    with torch.no_grad(), with_hooks(loaded.bridge, space.hooks(to_mean)):
        all_mean = probability_difference(logits_at(loaded, batch.tokens, batch.read), batch)
    torch.testing.assert_close(kept[1], all_mean, rtol=0, atol=1e-5)


def test_attributions_are_gradient_times_distance_from_the_mean(tiny_model):
    """A unit's attribution, summed over units, is the first-order change of the
    metric from every unit at its mean: close to the exact change for a small step."""
    loaded = tiny_model("tiny-llama")
    batch, layer = _batch(), 1
    space = UnitSpace("neurons", layer, None)
    attribution = unit_attributions(loaded, space, batch)
    rows = torch.arange(len(batch))
    with cache_activations(loaded.bridge, [f"blocks.{layer}.mlp.hook_post"]) as store:
        logits_at(loaded, batch.tokens, batch.read)
    actual = store[f"blocks.{layer}.mlp.hook_post"][rows, batch.read]
    # Move 1% of the way to the mean: the metric changes by -0.01 x the attributions.
    step = 0.01

    def towards_mean(units):
        units = units.clone()
        units[rows, batch.read] = actual + step * (space.means - actual)
        return units

    with torch.no_grad():
        base = probability_difference(logits_at(loaded, batch.tokens, batch.read), batch)
        with with_hooks(loaded.bridge, space.hooks(towards_mean)):
            moved = probability_difference(logits_at(loaded, batch.tokens, batch.read), batch)
    torch.testing.assert_close(
        (moved - base).double(), -step * attribution.sum(1).double(), rtol=2e-2, atol=1e-9
    )


def test_factorised_attribution_is_the_direct_path_with_the_norm_frozen(tiny_model):
    """With layer L's attention silenced, the only path from an upstream feature to a
    downstream pre-activation is the residual stream through the RMSNorm. The exact
    gradient there is the factorised term minus the norm's own dependence on its
    input, ``(x . u)(x . v) / (d r^3)``; computed here, the two agree."""
    loaded = tiny_model("tiny-llama")
    layer = 1
    batch = _batch()
    upstream, downstream = _random_transcoder(loaded, 1), _random_transcoder(loaded, 2)
    features = [0, 5, 7]
    silence = [(f"blocks.{layer}.hook_attn_out", lambda a, hook: torch.zeros_like(a))]
    rows = torch.arange(len(batch))
    with with_hooks(loaded.bridge, silence):
        table = feature_connections(loaded, batch, layer, upstream, downstream, features)
        with cache_activations(loaded.bridge, [f"blocks.{layer}.ln2.hook_in"]) as store:
            from circuit_repro.papers.transcoders.analysis import spliced

            with spliced(loaded.bridge, layer - 1, upstream, "transcoder"), torch.no_grad():
                logits_at(loaded, batch.tokens, batch.read)
    assert not table.empty
    x = store[f"blocks.{layer}.ln2.hook_in"][rows, batch.read].double()
    norm = loaded.bridge.blocks[layer].ln2.original_component
    gamma = norm.weight.detach().double()
    d = x.shape[1]
    r = torch.sqrt(x.pow(2).mean(1) + norm.variance_epsilon)
    for row in table.sample(40, random_state=0).itertuples():
        u = upstream.W_dec[row.upstream].detach().double()
        v = gamma * downstream.W_enc[:, row.downstream].detach().double()
        xp = x[row.prompt]
        correction = row.activation * (xp @ u) * (xp @ v) / (d * r[row.prompt] ** 3)
        assert row.attribution == pytest.approx(row.factorised - float(correction), abs=1e-5)
        assert row.factorised == pytest.approx(row.invariant * row.dependent, rel=1e-9)


def test_top_activating_contexts_are_the_largest_activations(tiny_model):
    loaded = tiny_model("tiny-llama")
    transcoder = _random_transcoder(loaded)
    contexts = torch.randint(5, 200, (10, 8), generator=torch.Generator().manual_seed(4))
    table = top_activating_contexts(loaded, contexts, 1, transcoder, "transcoder", [3, 9], 3)
    with cache_activations(loaded.bridge, ["blocks.1.mlp.hook_in"]) as store:
        loaded.hf_model.base_model(input_ids=contexts)
    activations = transcoder.encode(store["blocks.1.mlp.hook_in"])[:, 1:]
    for feature in (3, 9):
        best = activations[..., feature].amax(1).sort(descending=True).values[:3]
        rows = table[table["feature"] == feature].sort_values("rank")
        assert rows["activation"].to_numpy() == pytest.approx(best.detach().numpy(), abs=1e-5)
        assert rows["text"].str.contains(r"\[\[", regex=True).all()


def test_choose_layer_takes_the_largest_effect_after_layer_0_unless_configured():
    effects = pd.DataFrame({"layer": [0, 1, 2, 3], "effect": [0.9, 0.1, 0.3, -0.2]})
    assert choose_layer(effects) == 2
    assert choose_layer(effects, 3) == 3
