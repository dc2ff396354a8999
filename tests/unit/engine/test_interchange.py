"""Interventions at one position, subspace interchange and DAS (engine.subspace).

The suffix runs of :class:`PositionRuns` are checked against plain full forward passes
with the same hook (an independent implementation); DAS against a planted feature.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens.tools.analysis.interchange import SubspaceInterchange

from circuit_repro.engine.hooks import cache_activations, with_hooks
from circuit_repro.engine.subspace import (
    PositionRuns,
    collect_at,
    fewest_shapes,
    fit_das,
    full_patch,
    interchange_hook,
    layer_of,
    read_span,
    row_space,
    rowspace_split,
    split,
    unit,
)
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.tasks.ioi import generate_ioi


def prompts(loaded, n=6, seed=0):
    """IOI prompts (several lengths) and sources with the first two names swapped."""
    records = generate_ioi(loaded.tokenizer, n_prompts=n, seed=seed)
    base = [loaded.tokenizer(r["prompt"])["input_ids"] for r in records]
    source = [loaded.tokenizer(r["counterfactuals"]["abc"]["prompt"])["input_ids"] for r in records]
    end = [r["roles"]["END"] for r in records]
    s2 = [r["roles"]["S2"] for r in records]
    return base, source, s2, end


@torch.no_grad()
def naive_logits(loaded, tokens, hook, position, new_value):
    """One full forward per prompt with the activation at ``position`` replaced."""
    out = []
    for ids, pos, value in zip(tokens, position, new_value, strict=True):

        def replace(activation, hook, pos=pos, value=value):
            activation = activation.clone()
            activation[0, pos] = value if value is not None else activation[0, pos]
            return activation

        with with_hooks(loaded.bridge, [(hook, replace)]):
            logits = loaded.hf_model(torch.tensor([ids])).logits[0, -1]
        out.append(logits)
    return torch.stack(out)


def test_suffix_runs_equal_full_forward_passes(tiny_model_id, tiny_model):
    """Unpatched and patched logits from the intervened layer and position on equal a
    full forward per prompt (prompts of several lengths; patch before the read)."""
    loaded = tiny_model(tiny_model_id)
    base, source, s2, end = prompts(loaded)
    layer = loaded.n_layers - 2  # a later layer's attention reads the patched position
    hook = f"blocks.{layer}.mlp.hook_post"
    runs = PositionRuns(loaded, base, s2, end, start_layer=[0, layer]).from_layer(layer)
    clean = runs.all_logits()
    torch.testing.assert_close(
        clean, naive_logits(loaded, base, hook, s2, [None] * len(base)), atol=1e-4, rtol=1e-4
    )
    acts = collect_at(loaded, source, s2, [hook])[hook]
    patched = runs.all_logits([interchange_hook(hook, full_patch, acts)])
    torch.testing.assert_close(
        patched, naive_logits(loaded, base, hook, s2, list(acts)), atol=1e-4, rtol=1e-4
    )
    assert (patched - clean).abs().max() > 1e-3  # the patch did something


def test_patching_a_direction_from_a_prompt_to_itself_changes_nothing(tiny_model_id, tiny_model):
    loaded = tiny_model(tiny_model_id)
    base, _, _, end = prompts(loaded)
    hook = f"blocks.{loaded.n_layers - 1}.hook_resid_post"
    runs = PositionRuns(loaded, base, end, end, start_layer=loaded.n_layers - 1)
    own = collect_at(loaded, base, end, [hook])[hook]
    direction = torch.randn(own.shape[-1], 1, generator=torch.Generator().manual_seed(0))
    intervention = SubspaceInterchange(unit(direction))
    patched = runs.all_logits([interchange_hook(hook, intervention, own)])
    torch.testing.assert_close(patched, runs.all_logits(), atol=1e-5, rtol=1e-5)


def test_rowspace_and_kernel_parts_sum_to_the_direction_and_the_kernel_is_invisible(
    tiny_model_id, tiny_model
):
    """v = row + kernel; patching along the kernel part leaves the MLP's output (and so
    the logits) unchanged; the row-space part does change it."""
    loaded = tiny_model(tiny_model_id)
    base, source, s2, end = prompts(loaded)
    layer = loaded.n_layers - 2
    w_out = loaded.bridge.blocks[layer].mlp.W_out.detach()
    d_mlp, d_model = w_out.shape
    assert d_mlp > d_model  # the kernel has dimension d_mlp - d_model at least
    v = torch.randn(d_mlp, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    row, kernel = rowspace_split(v, w_out)
    torch.testing.assert_close(row + kernel, v, atol=1e-6, rtol=0)
    assert float(row @ kernel) == pytest.approx(0.0, abs=1e-6)
    assert (kernel @ w_out).abs().max() < 1e-5
    hook = f"blocks.{layer}.mlp.hook_post"
    out_hook = f"blocks.{layer}.mlp.out.hook_out"
    acts = collect_at(loaded, source, s2, [hook])[hook]
    runs = PositionRuns(loaded, base, s2, end, start_layer=layer)
    outputs = {}
    for name, vector in (("none", None), ("kernel", kernel), ("row", row)):
        hooks = (
            []
            if vector is None
            else [interchange_hook(hook, SubspaceInterchange(unit(vector)), acts)]
        )
        with cache_activations(loaded.bridge, [out_hook]) as cached:
            logits = runs.logits(0, np.arange(len(runs.groups[0].rows)), hooks)
        outputs[name] = (cached[out_hook], logits)
    torch.testing.assert_close(outputs["kernel"][0], outputs["none"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs["kernel"][1], outputs["none"][1], atol=1e-5, rtol=0)
    assert (outputs["row"][0] - outputs["none"][0]).abs().max() > 1e-4


def test_split_against_a_basis():
    basis = torch.linalg.qr(torch.randn(8, 3, generator=torch.Generator().manual_seed(2)))[0]
    v = torch.randn(8, generator=torch.Generator().manual_seed(3))
    inside, outside = split(v, basis)
    torch.testing.assert_close(inside + outside, v)
    assert (basis.T @ outside).abs().max() < 1e-6
    torch.testing.assert_close(inside, basis @ (basis.T @ v), atol=1e-6, rtol=0)
    assert row_space(torch.zeros(4, 2).index_fill_(0, torch.tensor([0]), 1.0)).shape == (4, 1)


def test_learned_basis_stays_orthonormal_and_the_fit_is_seeded(tiny_model):
    loaded = tiny_model("tiny-llama")
    base, source, _, end = prompts(loaded, n=10)
    layer = loaded.n_layers - 1
    hook = f"blocks.{layer}.hook_resid_post"
    runs = PositionRuns(loaded, base, end, end, start_layer=layer)
    acts = collect_at(loaded, source, end, [hook])[hook]
    targets = torch.tensor([ids[1] for ids in base])
    flags = [p.requires_grad for p in loaded.hf_model.parameters()]
    first = fit_das(runs, hook, acts, targets, rank=3, epochs=3, batch_size=4, lr=0.05, seed=5)
    again = fit_das(runs, hook, acts, targets, rank=3, epochs=3, batch_size=4, lr=0.05, seed=5)
    torch.testing.assert_close(first.basis.T @ first.basis, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(first.basis, again.basis)
    assert len(first.losses) == 3
    assert [p.requires_grad for p in loaded.hf_model.parameters()] == flags


def test_das_recovers_a_planted_direction():
    """A tiny Llama whose answer is the sign of the final residual stream along a
    planted direction u (the two answer tokens unembed as +u and -u, the final norm has
    unit weights): DAS at that residual stream, trained to make the model answer as
    each source, finds u (|cos| > 0.9; a random direction would give about 0.1)."""
    loaded = load_bridge(ensure_prepared("tiny-llama"))
    hf = loaded.hf_model
    d_model = hf.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(d_model, generator=generator)
    u = u / u.norm()
    answer_a, answer_b = 5, 6
    with torch.no_grad():
        hf.model.norm.weight.fill_(1.0)
        if hf.lm_head.weight is hf.model.embed_tokens.weight:
            hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach().clone())
        hf.lm_head.weight[answer_a] = 4 * u
        hf.lm_head.weight[answer_b] = -4 * u
    vocabulary = torch.tensor([answer_a, answer_b])
    tokens = torch.randint(10, hf.config.vocab_size, (160, 6), generator=generator).tolist()
    end = [5] * len(tokens)
    layer = loaded.n_layers - 1
    hook = f"blocks.{layer}.hook_resid_post"
    acts = collect_at(loaded, tokens, end, [hook])[hook]
    positive = (acts @ u > 0).numpy()
    pos_rows, neg_rows = np.flatnonzero(positive), np.flatnonzero(~positive)
    assert len(pos_rows) > 20 and len(neg_rows) > 20
    # Each base gets a source of the other sign: the target is the source's answer.
    partner = np.where(
        positive,
        neg_rows[np.arange(len(tokens)) % len(neg_rows)],
        pos_rows[np.arange(len(tokens)) % len(pos_rows)],
    )
    source = acts[partner]
    targets = torch.where(torch.as_tensor(positive), answer_b, answer_a)
    runs = PositionRuns(loaded, tokens, end, end, start_layer=layer)
    fit = fit_das(
        runs,
        hook,
        source,
        targets,
        epochs=15,
        batch_size=20,
        lr=0.05,
        seed=0,
        vocabulary=vocabulary,
        progress=False,
    )
    cosine = float(fit.basis[:, 0] @ u)
    assert abs(cosine) > 0.9, cosine
    logits = runs.all_logits(
        [interchange_hook(hook, SubspaceInterchange(fit.basis), source)],
        vocabulary.expand(len(tokens), -1),
    )
    accuracy = float(((logits[:, 0] > logits[:, 1]) == (targets == answer_a)).float().mean())
    assert accuracy > 0.95


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_read_span_holds_every_direction_the_queries_read(model_id, tiny_model):
    """Moving the residual stream orthogonally to the span leaves the heads' queries
    unchanged to first order; moving it inside the span changes them."""
    loaded = tiny_model(model_id)
    base, _, _, end = prompts(loaded)
    layer = loaded.n_layers - 1
    heads = [(layer, 0), (layer, 1)]
    resid_hook = f"blocks.{layer}.hook_resid_pre"
    resid = collect_at(loaded, base, end, [resid_hook])[resid_hook]
    basis = read_span(loaded, heads, {layer: resid})
    d_model = resid.shape[-1]
    assert 0 < basis.shape[1] < d_model
    point = resid.mean(0)

    def queries(x):
        captured = {}
        from circuit_repro.engine.forward import start_at_layer, stop_after

        def grab(activation, hook):
            captured["q"] = activation[0, 0, [0, 1]].detach().clone()

        with (
            torch.no_grad(),
            start_at_layer(loaded.bridge, layer, x.view(1, 1, -1)),
            with_hooks(loaded.bridge, [(f"blocks.{layer}.attn.hook_q", grab)]),
            stop_after(loaded.bridge, layer),
        ):
            loaded.hf_model.base_model(input_ids=torch.zeros(1, 1, dtype=torch.long))
        return captured["q"]

    epsilon = 1e-3 * point.norm()
    outside = torch.randn(d_model, generator=torch.Generator().manual_seed(4))
    outside = outside - basis @ (basis.T @ outside)
    outside = outside / outside.norm()
    inside = basis[:, 0]
    q0 = queries(point)
    moved_out = (queries(point + epsilon * outside) - q0).norm()
    moved_in = (queries(point + epsilon * inside) - q0).norm()
    assert moved_out < 1e-2 * moved_in


def test_position_runs_reject_bad_positions(tiny_model):
    loaded = tiny_model("tiny-llama")
    with pytest.raises(ValueError, match="patch position"):
        PositionRuns(loaded, [[1, 2, 3]], [2], [1])
    with pytest.raises(ValueError, match="start layers"):
        PositionRuns(loaded, [[1, 2, 3]], [1], [2], start_layer=99)
    with pytest.raises(ValueError, match="not a block hook"):
        layer_of("hook_embed")


def test_fewest_shapes_takes_the_largest_groups_first():
    shapes = ["a", "b", "b", "c", "b", "a", "c", "c", "c"]
    assert fewest_shapes(shapes, 4) == [3, 6, 7, 8]  # all four "c"
    assert fewest_shapes(shapes, 6) == [1, 2, 3, 6, 7, 8]  # then two of the three "b"
    assert fewest_shapes(shapes, 100) == list(range(9))
