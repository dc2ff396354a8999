"""Interventions: each context manager does exactly what it says to the hooked activation."""

from __future__ import annotations

import pytest
import torch

from circuit_repro.engine.hooks import (
    Component,
    ablate,
    all_components,
    cache_activations,
    knock_out_edges,
    kv_group,
    override_attention,
    patch,
    patch_subspace,
    query_heads_of_group,
    scale,
)
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def model(request):
    loaded = load_bridge(ensure_prepared(request.param))
    tokenizer = loaded.tokenizer
    tokens = tokenizer(
        ["When Mary and John went to the store, John gave a drink to"] * 2
        + ["Then, Anna and Paul had fun at the park. Paul gave a ball to"] * 2,
        return_tensors="pt",
        padding=True,
    ).input_ids
    reference = tokenizer(
        ["Then, Anna and Paul had fun at the park. Paul gave a ball to"] * 3,
        return_tensors="pt",
        padding="max_length",
        max_length=tokens.shape[1],
    ).input_ids
    return loaded.bridge, tokens, reference


HEAD = Component("head", 1, 2)
Z = HEAD.hook_name


def run(bridge, tokens, names=(Z,)):
    with torch.no_grad(), cache_activations(bridge, names) as cache:
        logits = bridge(tokens)
    return logits, cache


def test_zero_ablation_zeroes_only_the_component(model):
    bridge, tokens, _ = model
    _, plain = run(bridge, tokens)
    with ablate(bridge, [HEAD], "zero"):
        _, ablated = run(bridge, tokens)
    assert ablated[Z][:, :, 2].abs().max() == 0
    others = [h for h in range(bridge.cfg.n_heads) if h != 2]
    torch.testing.assert_close(ablated[Z][:, :, others], plain[Z][:, :, others])


def test_mean_ablation_uses_the_reference_mean(model):
    bridge, tokens, reference = model
    _, ref = run(bridge, reference)
    with ablate(bridge, [HEAD], "mean", reference=ref):
        _, ablated = run(bridge, tokens)
    expected = ref[Z][:, :, 2].mean(dim=0)
    for row in range(tokens.shape[0]):
        torch.testing.assert_close(ablated[Z][row, :, 2], expected)


def test_resample_ablation_draws_reference_rows(model):
    bridge, tokens, reference = model
    _, ref = run(bridge, reference)
    # Make reference rows distinguishable, then check each ablated row is one of them.
    ref = {Z: ref[Z] + torch.arange(3.0)[:, None, None, None]}
    with ablate(bridge, [HEAD], "resample", reference=ref, seed=3):
        _, ablated = run(bridge, tokens)
    for row in range(tokens.shape[0]):
        matches = [torch.allclose(ablated[Z][row, :, 2], ref[Z][r, :, 2]) for r in range(3)]
        assert sum(matches) == 1


def test_ablation_needs_a_reference_unless_zero(model):
    bridge, _, _ = model
    with pytest.raises(ValueError, match="needs reference"), ablate(bridge, [HEAD], "mean"):
        pass


def test_scale_by_one_is_identity_and_by_zero_is_zero_ablation(model):
    bridge, tokens, _ = model
    plain, _ = run(bridge, tokens)
    with scale(bridge, [HEAD], 1.0):
        same, _ = run(bridge, tokens)
    torch.testing.assert_close(same, plain, atol=0, rtol=0)
    with scale(bridge, [HEAD], 0.0):
        scaled, _ = run(bridge, tokens)
    with ablate(bridge, [HEAD], "zero"):
        zeroed, _ = run(bridge, tokens)
    torch.testing.assert_close(scaled, zeroed)
    with scale(bridge, [HEAD], 1.3):
        _, cache = run(bridge, tokens)
    _, plain_cache = run(bridge, tokens)
    torch.testing.assert_close(cache[Z][:, :, 2], 1.3 * plain_cache[Z][:, :, 2])


def test_override_attention_sets_the_pattern_and_changes_the_output(model):
    bridge, tokens, _ = model
    name = "blocks.1.attn.hook_pattern"
    plain, own = run(bridge, tokens, [name])
    with override_attention(bridge, 1, [0, 3], own[name][:, [0, 3]]):
        same, _ = run(bridge, tokens)
    torch.testing.assert_close(same, plain, atol=1e-6, rtol=0)
    seq = tokens.shape[1]
    first_token = torch.zeros(tokens.shape[0], seq, seq)
    first_token[:, :, 0] = 1.0  # every query attends to position 0
    with override_attention(bridge, 1, [0, 3], first_token):
        changed, cache = run(bridge, tokens, [name, "blocks.1.attn.hook_z"])
    assert torch.equal(cache[name][:, 0], first_token)
    assert not torch.allclose(changed, plain)
    # Head 0's output at every position is now the value vector of position 0.
    z = cache["blocks.1.attn.hook_z"][:, :, 0]
    torch.testing.assert_close(z, z[:, :1].expand_as(z), atol=1e-6, rtol=0)


def test_knock_out_edges_removes_attention_and_renormalises(model):
    bridge, tokens, _ = model
    name = "blocks.0.attn.hook_pattern"
    seq = tokens.shape[1]
    plain, own = run(bridge, tokens, [name])
    with knock_out_edges(bridge, {0: torch.zeros(seq, seq, dtype=torch.bool)}):
        same, _ = run(bridge, tokens)
    torch.testing.assert_close(same, plain, atol=0, rtol=0)
    mask = torch.zeros(seq, seq, dtype=torch.bool)
    mask[seq - 1, 1] = True  # last token may not attend to position 1
    with knock_out_edges(bridge, {0: mask}, heads=[1]):
        _, cache = run(bridge, tokens, [name])
    pattern = cache[name]
    assert pattern[:, 1, seq - 1, 1].abs().max() == 0
    torch.testing.assert_close(pattern[:, 1, seq - 1].sum(-1), torch.ones(tokens.shape[0]))
    expected = own[name][:, 1, seq - 1].clone()
    expected[:, 1] = 0
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(pattern[:, 1, seq - 1], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(pattern[:, 0], own[name][:, 0])  # other heads untouched


def test_subspace_patch_moves_only_the_subspace(model):
    bridge, tokens, reference = model
    name = "blocks.1.hook_resid_pre"
    component = Component("resid_pre", 1)
    _, source = run(bridge, reference[:1].expand(tokens.shape[0], -1), [name])
    _, plain = run(bridge, tokens, [name, "blocks.1.hook_resid_post"])
    d_model = bridge.cfg.d_model
    basis = torch.linalg.qr(torch.randn(d_model, 3, generator=torch.Generator().manual_seed(0)))[0]
    with patch_subspace(bridge, component, basis, source):
        _, patched = run(bridge, tokens, [name])
    delta = patched[name] - plain[name]
    projector = basis @ basis.T
    torch.testing.assert_close(delta @ projector, delta, atol=1e-5, rtol=0)  # inside span
    torch.testing.assert_close(
        patched[name] @ projector, source[name] @ projector, atol=1e-5, rtol=0
    )
    full = torch.eye(d_model)
    with patch_subspace(bridge, component, full, source):
        _, whole = run(bridge, tokens, [name])
    with patch(bridge, [component], source):
        _, patched_whole = run(bridge, tokens, [name])
    torch.testing.assert_close(whole[name], patched_whole[name], atol=1e-5, rtol=0)


def test_stacked_variants_patch_their_own_rows(model):
    bridge, tokens, reference = model
    _, source = run(bridge, reference[:1].expand(tokens.shape[0], -1))
    _, plain = run(bridge, tokens)
    plan = {0: [Component("head", 1, 0)], 1: [Component("head", 1, 3)]}
    stacked = tokens.repeat(2, 1)
    with patch(bridge, plan, source, n_prompts=tokens.shape[0]):
        _, cache = run(bridge, stacked)
    n = tokens.shape[0]
    torch.testing.assert_close(cache[Z][:n, :, 0], source[Z][:, :, 0])
    torch.testing.assert_close(cache[Z][:n, :, 3], plain[Z][:, :, 3])
    torch.testing.assert_close(cache[Z][n:, :, 3], source[Z][:, :, 3])
    torch.testing.assert_close(cache[Z][n:, :, 0], plain[Z][:, :, 0])


def test_component_validation_and_enumeration(model):
    bridge, _, _ = model
    with pytest.raises(ValueError, match="needs an index"):
        Component("head", 0)
    with pytest.raises(ValueError, match="takes no index"):
        Component("resid_pre", 0, 1)
    with pytest.raises(ValueError, match="unknown component kind"):
        Component("residual", 0)
    heads = all_components(bridge, "head", [None, 3])
    assert len(heads) == bridge.cfg.n_layers * bridge.cfg.n_heads * 2
    assert Component("head", 3, 4).hook_name == "blocks.3.attn.hook_z"


def test_kv_groups():
    assert [kv_group(h, 9, 3) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(query_heads_of_group(1, 9, 3)) == [3, 4, 5]
    with pytest.raises(ValueError):
        kv_group(0, 9, 4)
