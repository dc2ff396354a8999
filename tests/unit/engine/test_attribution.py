"""AtP, EAP, EAP-IG and circuits against independent recomputations on tiny models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from circuit_repro.engine.attribution import attribution_patching, compare_with_exact
from circuit_repro.engine.circuits import (
    Circuit,
    circuit_faithfulness,
    extract_circuit,
    overlap,
    top_k_by_magnitude,
)
from circuit_repro.engine.edges import (
    Graph,
    edge_attribution,
    edge_intervention_hooks,
    exact_edge_patching,
    graph_activations,
    graph_hooks_enabled,
    integration_points,
    record_outputs,
)
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, all_components, cache_activations, has_kind
from circuit_repro.engine.patching import (
    PatchingRuns,
    add_normalized_effect,
    patching_sweep,
    runs_from_records,
)
from circuit_repro.tasks import generate_task

N_PROMPTS = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; on a shared two-core machine, more threads
    oversubscribe the CPU (a forward pass became up to 50x slower under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model(tiny_model):
    """The shared loader of tiny random models (tests/conftest.py), float64 on request."""
    return tiny_model


def ioi(loaded, n_prompts: int = N_PROMPTS):
    """Flipped-IOI corrupt prompts as base, clean prompts as source."""
    return runs_from_records(
        loaded.tokenizer, generate_task("ioi", loaded.tokenizer, {"n_prompts": n_prompts}, seed=1)
    )


def mean_metric(loaded, runs, metric, tokens) -> float:
    with torch.no_grad():
        logits = logits_at(loaded, tokens, runs.read_positions)
    return metric(logits, torch.arange(runs.n_prompts)).double().mean().item()


def late_position(runs) -> int:
    """A position before every prompt's read position (prompts are right-padded)."""
    return int(runs.read_positions.min()) - 1


def mixed_components(loaded, runs) -> list[Component]:
    """Some components of every kind, at all positions and at single positions."""
    late = late_position(runs)
    components = []
    for kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        if has_kind(loaded.bridge, kind):
            components += all_components(loaded.bridge, kind, [None, 2, late])
    for kind in ("head", "q", "k", "v", "pattern"):
        components += all_components(loaded.bridge, kind, [None, late])
    components += [Component("neuron", layer, n) for layer in (0, 1) for n in (0, 7, 31)]
    components += [Component("neuron", 1, 5, late)]
    return components


# ------------------------------------------------------------------------- AtP


def _component_mask(activation: torch.Tensor, component: Component) -> torch.Tensor:
    mask = torch.zeros_like(activation)
    mask[component.selector()] = 1.0
    return mask


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_atp_equals_a_per_component_autograd_loop(model_id, model):
    """The vectorised AtP against one backward pass per component on its own."""
    loaded = model(model_id)
    runs, metric = ioi(loaded)
    components = mixed_components(loaded, runs)
    table = attribution_patching(loaded, runs, components, metric, batch_size=4)

    bridge, prompt_index = loaded.bridge, torch.arange(runs.n_prompts)
    checked = list(range(0, len(components), max(1, len(components) // 16)))
    names = sorted({components[i].hook_name for i in checked})
    with torch.no_grad(), cache_activations(bridge, names) as source:
        logits_at(loaded, runs.source_tokens, runs.read_positions)
    expected = []
    for i in checked:
        component, seen = components[i], {}

        def probe(activation, hook, seen=seen):
            seen["base"] = activation.detach()
            seen["probe"] = torch.zeros_like(activation, requires_grad=True)
            return activation + seen["probe"]

        with bridge.hooks(fwd_hooks=[(component.hook_name, probe)]):
            logits = logits_at(loaded, runs.base_tokens, runs.read_positions)
            (grad,) = torch.autograd.grad(metric(logits, prompt_index).mean(), [seen["probe"]])
        delta = source[component.hook_name] - seen["base"]
        expected.append((delta * grad * _component_mask(grad, component)).sum().item())

    np.testing.assert_allclose(table["score"].iloc[checked], expected, rtol=1e-4, atol=1e-7)
    assert np.abs(expected).max() > 1e-4  # the comparison is not between zeros
    assert {c.kind for c in map(components.__getitem__, checked)} >= {"head", "neuron", "k"}
    assert set(table.columns) >= {"kind", "layer", "index", "position", "value", "metric"}
    assert (table["method"] == "atp").all()
    np.testing.assert_allclose(table["value"], table["base_value"] + table["score"])
    base = mean_metric(loaded, runs, metric, runs.base_tokens)
    assert table["base_value"].iloc[0] == pytest.approx(base, rel=1e-5)


# Float64 central differences against the gradients. GPT-2 computes entirely in float64;
# the RMSNorms of Llama and Gemma compute in float32 even in a float64 model, so their
# differences need a larger step (truncation error ~ eps^2) to rise above that rounding.
DERIVATIVE_CASES = [
    ("tiny-gpt2", 1e-4, 1e-6),
    ("tiny-llama", 1e-2, 1e-3),
    ("tiny-gemma3", 1e-2, 1e-3),
]


@pytest.mark.parametrize(("model_id", "eps", "tolerance"), DERIVATIVE_CASES)
def test_atp_is_the_derivative_of_patching(model_id, eps, tolerance, model):
    """Patching a fraction eps of the source-base difference changes the metric by
    eps * AtP to first order: (m(+eps) - m(-eps)) / 2 eps = AtP score."""
    loaded = model(model_id, float64=True)
    runs, metric = ioi(loaded)
    components = [
        Component("head", 0, 1),
        Component("head", 0, 3, late_position(runs)),
        Component("head", 1, 2),
        Component("v", 0, 0),
        Component("mlp_out", 0),
        Component("resid_pre", 1, None, late_position(runs)),
        Component("neuron", 0, 9),
        Component("pattern", 1, 2),
    ]
    table = attribution_patching(loaded, runs, components, metric)
    names = sorted({c.hook_name for c in components})
    with torch.no_grad(), cache_activations(loaded.bridge, names) as source:
        logits_at(loaded, runs.source_tokens, runs.read_positions)

    def moved(component, step):
        def shift(activation, hook):
            activation = activation.clone()
            index = component.selector()
            activation[index] += step * (source[component.hook_name][index] - activation[index])
            return activation

        with loaded.bridge.hooks(fwd_hooks=[(component.hook_name, shift)]):
            return mean_metric(loaded, runs, metric, runs.base_tokens)

    derivative = np.array([(moved(c, eps) - moved(c, -eps)) / (2 * eps) for c in components])
    assert (np.abs(derivative) > 1e-6).all()  # every component moves the metric
    scale = np.abs(derivative).max()
    np.testing.assert_allclose(table["score"], derivative, rtol=0, atol=tolerance * scale)


def test_atp_of_a_run_with_itself_is_zero(model):
    loaded = model("tiny-llama")
    runs, metric = ioi(loaded)
    same = PatchingRuns(runs.base_tokens, runs.base_tokens, runs.read_positions)
    table = attribution_patching(loaded, same, mixed_components(loaded, runs), metric)
    assert np.abs(table["score"]).max() == 0.0


def test_atp_cost_does_not_grow_with_the_number_of_components(model):
    """Two forward passes (source, base) whatever the number of components."""
    loaded = model("tiny-qwen2")
    runs, metric = ioi(loaded)
    calls = []

    def count(activation, hook):
        calls.append(activation.shape[0])

    few = [Component("head", 0, 0)]
    many = mixed_components(loaded, runs) + all_components(loaded.bridge, "neuron", [None, 3])
    assert len(many) > 500
    for components in (few, many):
        calls.clear()
        with loaded.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", count)]):
            attribution_patching(loaded, runs, components, metric)
        assert calls == [runs.n_prompts, runs.n_prompts]


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-neox", "tiny-qwen2"])
def test_atp_ranks_components_like_exact_patching(model_id, model):
    loaded = model(model_id)
    runs, metric = ioi(loaded)
    components = []
    for kind in ("head", "q", "k", "v", "pattern"):
        components += all_components(loaded.bridge, kind, [None, late_position(runs)])
    components += all_components(loaded.bridge, "neuron")[::5]
    result = compare_with_exact(loaded, runs, components, metric, sample=48, seed=0)
    assert result["n"] == 48
    assert result["spearman"] > 0.95, result
    assert result["pearson"] > 0.95, result
    assert result["mean_abs_error"] < 0.2 * result["mean_abs_exact"], result


# ----------------------------------------------------------------------- graph


@pytest.mark.parametrize("split_qkv", [False, True])
def test_every_node_input_is_the_sum_of_its_upstream_outputs(tiny_model_id, split_qkv, model):
    """The edges are right: each reader's copy of the stream = its writers' outputs."""
    loaded = model(tiny_model_id)
    runs, _ = ioi(loaded, n_prompts=3)
    graph = Graph.from_model(loaded, split_qkv=split_qkv)
    outputs, inputs = graph_activations(loaded, graph, runs.base_tokens)
    assert outputs.shape[2] == len(graph.upstream) and inputs.shape[2] == len(graph.downstream)
    for v, node in enumerate(graph.downstream):
        expected = outputs[:, :, : graph.n_feeding(v)].sum(dim=2)
        torch.testing.assert_close(inputs[:, :, v], expected, atol=1e-5, rtol=1e-5, msg=node.name)
        # Leaving out the last writer feeding v breaks the identity (no slack in the test).
        partial = outputs[:, :, : graph.n_feeding(v) - 1].sum(dim=2)
        assert (inputs[:, :, v] - partial).abs().max() > 1e-3, node.name


def test_graph_structure_per_architecture(model):
    llama = Graph.from_model(model("tiny-llama"))  # 4 query heads, 2 K/V heads
    names = [node.name for node in llama.downstream]
    assert "a1.h3<q>" in names and "a1.g1<kv>" in names and "a1.h3" not in names
    assert ("a0.h2", "m0") in llama.edges() and ("m0", "a1.g0<kv>") in llama.edges()
    assert ("m0", "m0") not in llama.edges() and ("a1.h0", "a1.h1<q>") not in llama.edges()
    split = Graph.from_model(model("tiny-llama"), split_qkv=True)
    assert {"a0.g1<k>", "a0.g1<v>", "a0.h3<q>"} <= {node.name for node in split.downstream}

    gpt2 = Graph.from_model(model("tiny-gpt2"))  # multi-head: one input node per head
    assert "a1.h2" in [node.name for node in gpt2.downstream]
    assert len(gpt2.upstream) == 1 + 2 * (4 + 1)
    # 1 + 2 * 5 upstream; heads of layer 0 read input (1), layer 1 read 6, MLP 0 reads 5,
    # MLP 1 reads 10, logits read 11.
    assert len(gpt2.edges()) == 4 * 1 + 4 * 6 + 5 + 10 + 11

    neox = Graph.from_model(model("tiny-neox"))  # parallel attention: a0 does not feed m0
    assert neox.parallel_attn_mlp
    assert ("a0.h1", "m0") not in neox.edges() and ("a0.h1", "m1") in neox.edges()

    gemma = Graph.from_model(model("tiny-gemma3"))  # post-attention norm: layer nodes
    assert not gemma.per_head_outputs
    assert [node.name for node in gemma.upstream] == ["input", "a0", "m0", "a1", "m1"]
    assert ("a0", "m0") in gemma.edges() and ("a0", "a1.g0<kv>") in gemma.edges()


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-neox"])
def test_graph_hooks_keep_logits_and_restore_the_bridge(model_id, model):
    loaded = model(model_id)
    runs, _ = ioi(loaded, n_prompts=3)
    with torch.no_grad():
        plain = logits_at(loaded, runs.base_tokens, runs.read_positions)
        with graph_hooks_enabled(loaded.bridge):
            assert loaded.bridge.cfg.use_split_qkv_input
            forked = logits_at(loaded, runs.base_tokens, runs.read_positions)
        after = logits_at(loaded, runs.base_tokens, runs.read_positions)
    torch.testing.assert_close(forked, plain, atol=1e-5, rtol=1e-5)
    assert not loaded.bridge.cfg.use_split_qkv_input
    assert not loaded.bridge.cfg.use_attn_result
    assert torch.equal(after, plain)


@pytest.mark.parametrize(
    "model_id", ["tiny-llama", "tiny-gpt2", "tiny-neox", "tiny-gemma3", "tiny-qwen2"]
)
def test_exact_edge_patching_equals_full_runs_with_live_edge_hooks(model_id, model):
    """The fast path (start at the receiver's layer, a fixed difference added, no-op
    edges not run) against full forward passes through ``edge_intervention_hooks``,
    which recompute each upstream output live: every edge, within 1e-5 (float32)."""
    loaded = model(model_id)
    runs, metric = ioi(loaded)
    graph = Graph.from_model(loaded, split_qkv=True)
    edges = graph.edges()
    fast = exact_edge_patching(loaded, runs, metric, graph=graph, token_budget=400)
    up_index = {node.name: i for i, node in enumerate(graph.upstream)}
    down_index = {node.name: i for i, node in enumerate(graph.downstream)}
    with graph_hooks_enabled(loaded.bridge):
        source = record_outputs(loaded, graph, runs.source_tokens, runs.read_positions, None)
        with torch.no_grad():
            base = logits_at(loaded, runs.base_tokens, runs.read_positions)
            base_value = metric(base, torch.arange(runs.n_prompts)).double().mean().item()
            reference = []
            for u, v in edges:
                coefficients = torch.zeros(1, len(graph.upstream), len(graph.downstream))
                coefficients[0, up_index[u], down_index[v]] = 1.0
                hooks = edge_intervention_hooks(graph, coefficients, source, runs.n_prompts)
                with loaded.bridge.hooks(fwd_hooks=hooks):
                    logits = logits_at(loaded, runs.base_tokens, runs.read_positions)
                value = metric(logits, torch.arange(runs.n_prompts)).double().mean().item()
                reference.append(value - base_value)
    reference = np.array(reference)
    assert np.abs(fast["score"].to_numpy() - reference).max() < 1e-5
    assert np.abs(reference).max() > 1e-3  # the edges do move the metric


# ------------------------------------------------------------------ EAP, EAP-IG


@pytest.mark.parametrize("split_qkv", [False, True])
@pytest.mark.parametrize(("model_id", "eps", "tolerance"), DERIVATIVE_CASES)
def test_eap_is_the_derivative_of_exact_edge_patching(model_id, eps, tolerance, split_qkv, model):
    """EAP (autograd through the probes) = d/d(scale) of exact edge patching (hooks)."""
    loaded = model(model_id, float64=True)
    runs, metric = ioi(loaded)
    graph = Graph.from_model(loaded, split_qkv=split_qkv)
    eap = edge_attribution(loaded, runs, metric, "eap", graph=graph)
    up = exact_edge_patching(loaded, runs, metric, graph=graph, scale=eps)
    down = exact_edge_patching(loaded, runs, metric, graph=graph, scale=-eps)
    derivative = ((up["score"] - down["score"]) / (2 * eps)).to_numpy()
    assert list(eap["upstream"]) == list(up["upstream"])
    assert list(eap["downstream"]) == list(up["downstream"])
    assert len(eap) == len(graph.edges())
    scale = np.abs(derivative).max()
    assert scale > 1e-4 and (np.abs(derivative) > 1e-3 * scale).mean() > 0.5
    np.testing.assert_allclose(eap["score"], derivative, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gemma3"])
def test_eap_ig_scores_from_input_add_up_to_the_total_effect(model_id, model):
    """Completeness of integrated gradients: the input embedding reaches the metric only
    through the edges leaving ``input``, so their EAP-IG scores sum to
    metric(source) - metric(base) as the number of steps grows."""
    loaded = model(model_id)
    runs, metric = ioi(loaded)
    total = mean_metric(loaded, runs, metric, runs.source_tokens) - mean_metric(
        loaded, runs, metric, runs.base_tokens
    )
    scores = edge_attribution(loaded, runs, metric, "eap-ig", steps=16, split_qkv=True)
    from_input = scores.loc[scores["upstream"] == "input", "score"].sum()
    assert from_input == pytest.approx(total, rel=1e-2)
    eap = edge_attribution(loaded, runs, metric, "eap", split_qkv=True)
    eap_error = abs(eap.loc[eap["upstream"] == "input", "score"].sum() - total)
    assert abs(from_input - total) < 0.1 * eap_error


def test_eap_ig_left_rule_with_one_step_is_eap(model):
    loaded = model("tiny-gpt2")
    runs, metric = ioi(loaded)
    eap = edge_attribution(loaded, runs, metric, "eap")
    ig = edge_attribution(loaded, runs, metric, "eap-ig", steps=1, ig_rule="left")
    np.testing.assert_allclose(ig["score"], eap["score"], rtol=1e-6, atol=1e-9)
    assert integration_points(4) == [0.125, 0.375, 0.625, 0.875]
    assert integration_points(4, "right") == [0.25, 0.5, 0.75, 1.0]


def test_scores_do_not_depend_on_the_batch_size(model):
    loaded = model("tiny-llama")
    runs, metric = ioi(loaded)
    whole = edge_attribution(loaded, runs, metric, "eap-ig", steps=3, batch_size=None)
    split = edge_attribution(loaded, runs, metric, "eap-ig", steps=3, batch_size=4)
    np.testing.assert_allclose(split["score"], whole["score"], rtol=1e-4, atol=1e-8)
    components = mixed_components(loaded, runs)
    atp_whole = attribution_patching(loaded, runs, components, metric)
    atp_split = attribution_patching(loaded, runs, components, metric, batch_size=5)
    np.testing.assert_allclose(atp_split["score"], atp_whole["score"], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-neox", "tiny-qwen2"])
def test_eap_ig_with_many_steps_approaches_exact_edge_patching(model_id, model):
    """On these two-layer models EAP's linearisation is visibly off (Pearson 0.7-0.96
    with exact edge patching); EAP-IG with 32 steps tracks exact patching much closer."""
    loaded = model(model_id)
    runs, metric = ioi(loaded)
    exact = exact_edge_patching(loaded, runs, metric)["score"].to_numpy()
    eap = edge_attribution(loaded, runs, metric, "eap")["score"].to_numpy()
    ig = edge_attribution(loaded, runs, metric, "eap-ig", steps=32)["score"].to_numpy()
    assert stats.pearsonr(ig, exact)[0] > 0.98
    assert stats.spearmanr(ig, exact)[0] > 0.95
    mae_eap, mae_ig = np.abs(eap - exact).mean(), np.abs(ig - exact).mean()
    assert mae_ig < 0.5 * mae_eap, (mae_ig, mae_eap)
    assert stats.pearsonr(ig, exact)[0] > stats.pearsonr(eap, exact)[0]


# --------------------------------------------------------------------- circuits


def test_extract_circuit_selects_by_magnitude_and_round_trips(tmp_path):
    edges = pd.DataFrame(
        {
            "upstream": ["input", "a0.h1", "m0", "a0.h2"],
            "downstream": ["m0", "logits", "logits", "a1.h0"],
            "score": [0.5, -2.0, 0.1, 1.0],
            "method": "eap-ig",
        }
    )
    circuit = extract_circuit(edges, top_k=2)
    assert circuit.level == "edge"
    assert circuit.edges == [("a0.h1", "logits"), ("a0.h2", "a1.h0")]
    assert set(circuit.nodes) == {"a0.h1", "logits", "a0.h2", "a1.h0"}
    assert circuit.scores == {"a0.h1->logits": -2.0, "a0.h2->a1.h0": 1.0}
    assert circuit.settings["method"] == "eap-ig" and circuit.settings["n_candidates"] == 4
    assert extract_circuit(edges, threshold=0.5).edges == [
        ("input", "m0"),
        ("a0.h1", "logits"),
        ("a0.h2", "a1.h0"),
    ]
    assert extract_circuit(edges, top_k=1, threshold=0.05).edges == [("a0.h1", "logits")]
    with pytest.raises(ValueError):
        extract_circuit(edges)

    path = tmp_path / "circuit.json"
    circuit.to_json(path)
    assert Circuit.from_json(path) == circuit

    nodes = extract_circuit({"a0.h1": 0.3, "m1": -0.9, "a1.h2": 0.01}, threshold=0.1)
    assert nodes.level == "node" and nodes.nodes == ["a0.h1", "m1"]
    nodes.to_json(path)
    assert Circuit.from_json(path) == nodes


def test_top_k_by_magnitude_and_overlap():
    values = np.array([0.5, -2.0, 2.0, 0.1, -0.5])
    assert top_k_by_magnitude(values, 3).tolist() == [1, 2, 0]  # |-2| = |2|: lower first
    assert top_k_by_magnitude(values, 10).tolist() == [1, 2, 0, 4, 3]
    assert top_k_by_magnitude(values, 0).tolist() == []
    assert overlap({1, 2, 3}, {2, 3, 4, 5}) == (0.4, 2, 5)
    assert overlap({"a0.h1"}, set()) == (0.0, 0, 1)
    assert overlap(set(), set()) == (0.0, 0, 0)


def test_circuit_selection_keeps_its_rule_with_ties():
    """extract_circuit: |score| >= threshold, then the top_k by |score|, ties to the lower
    index, as one stable sort of every candidate would select."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = rng.integers(-3, 4, size=int(rng.integers(1, 12))).astype(float)
        top_k = [None, *range(0, 6)][int(rng.integers(0, 7))]
        threshold = [None, 0.0, 1.0, 2.5][int(rng.integers(0, 4))]
        if top_k is None and threshold is None:
            continue
        names = [f"a0.h{i}" for i in range(len(values))]
        circuit = extract_circuit(dict(zip(names, values, strict=True)), top_k, threshold)
        order = np.argsort(-np.abs(values), kind="stable")
        if threshold is not None:
            order = order[np.abs(values)[order] >= threshold]
        if top_k is not None:
            order = order[:top_k]
        assert circuit.nodes == [names[i] for i in sorted(order)]


def test_node_circuits_from_component_tables(model):
    loaded = model("tiny-llama")
    runs, metric = ioi(loaded)
    components = all_components(loaded.bridge, "head") + all_components(loaded.bridge, "mlp_out")
    names = [f"a{c.layer}.h{c.index}" if c.kind == "head" else f"m{c.layer}" for c in components]

    def top3(effects: pd.Series) -> set[str]:
        return {names[i] for i in effects.abs().sort_values(ascending=False).index[:3]}

    atp = attribution_patching(loaded, runs, components, metric)
    circuit = extract_circuit(atp, top_k=3)
    assert circuit.level == "node" and set(circuit.nodes) == top3(atp["score"])
    assert circuit.settings["method"] == "atp"
    # An exact patching table with base_value is scored by its effect, value - base_value.
    exact = add_normalized_effect(
        patching_sweep(loaded, runs, components, metric, progress=False),
        base_value=atp["base_value"].iloc[0],
        source_value=mean_metric(loaded, runs, metric, runs.source_tokens),
    )
    effect = exact["value"] - exact["base_value"]
    circuit = extract_circuit(exact, top_k=3)
    assert set(circuit.nodes) == top3(effect)
    assert circuit.scores == {
        names[i]: effect[i] for i in range(len(names)) if names[i] in circuit.nodes
    }
    with pytest.raises(ValueError):  # a head at one position is not a node
        extract_circuit(
            attribution_patching(loaded, runs, [Component("head", 0, 0, 2)], metric), top_k=1
        )


@pytest.mark.parametrize("ablation", ["mean", "source"])
@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-neox", "tiny-gemma3"])
def test_faithfulness_of_full_and_empty_circuits(model_id, ablation, model):
    loaded = model(model_id)
    runs, metric = ioi(loaded)
    graph = Graph.from_model(loaded)
    every_edge = Circuit("edge", [], graph.edges())
    every_node = Circuit("node", [node.name for node in graph.upstream[1:]])
    for circuit in (every_edge, every_node):
        result = circuit_faithfulness(loaded, runs, circuit, metric, ablation, graph=graph)
        assert result["faithfulness"] == pytest.approx(1.0, abs=1e-4)
        assert result["n_kept"] == result["n_total"]
        assert abs(result["metric_full"] - result["metric_ablated"]) > 1e-3
    for level in ("edge", "node"):
        empty = Circuit(level, [], [])
        result = circuit_faithfulness(loaded, runs, empty, metric, ablation, graph=graph)
        assert result["faithfulness"] == pytest.approx(0.0, abs=1e-4)
        assert result["n_kept"] == 0


@pytest.mark.parametrize(
    "model_id", ["tiny-llama", "tiny-gpt2", "tiny-neox", "tiny-gemma3", "tiny-qwen2"]
)
def test_ablating_every_edge_from_source_reproduces_the_source_run(model_id, model):
    """Each reader then gets the sum of source outputs, i.e. its source-run input."""
    loaded = model(model_id)
    runs, metric = ioi(loaded)
    result = circuit_faithfulness(loaded, runs, Circuit("edge", []), metric, "source")
    source = mean_metric(loaded, runs, metric, runs.source_tokens)
    base = mean_metric(loaded, runs, metric, runs.base_tokens)
    assert result["metric_ablated"] == pytest.approx(source, rel=1e-4, abs=1e-6)
    assert result["metric_full"] == pytest.approx(base, rel=1e-4, abs=1e-6)


def test_circuits_missing_one_piece_match_single_patches(model):
    """Node level: all but one head, source ablation = patching that head alone.
    Edge level: all but one edge = exact patching of that edge."""
    loaded = model("tiny-llama")
    runs, metric = ioi(loaded)
    graph = Graph.from_model(loaded)
    units = [node.name for node in graph.upstream[1:]]
    without = Circuit("node", [name for name in units if name != "a1.h2"])
    result = circuit_faithfulness(loaded, runs, without, metric, "source", graph=graph)
    patched = patching_sweep(loaded, runs, [Component("head", 1, 2)], metric, progress=False)
    assert result["metric_circuit"] == pytest.approx(patched["value"].iloc[0], rel=1e-5)

    edges = graph.edges()
    exact = exact_edge_patching(loaded, runs, metric, graph=graph)
    largest = exact.reindex(exact["score"].abs().sort_values(ascending=False).index)
    for missing in zip(largest["upstream"][:4], largest["downstream"][:4], strict=True):
        kept = Circuit("edge", [], [edge for edge in edges if edge != missing])
        result = circuit_faithfulness(loaded, runs, kept, metric, "source", graph=graph)
        single = exact_edge_patching(loaded, runs, metric, graph=graph, edges=[missing])
        change = result["metric_circuit"] - result["metric_full"]
        assert change == pytest.approx(single["score"].iloc[0], rel=1e-4, abs=1e-7)
        assert abs(change) > 1e-6


def test_eap_ig_per_prompt_shares_add_up_and_match_single_prompt_runs(model):
    """Each prompt's share of the EAP-IG scores (for bootstraps over prompts) sums to the
    scores, and equals that prompt scored alone (the objective averages over prompts)."""
    loaded = model("tiny-llama")
    runs, metric = ioi(loaded)
    table, shares = edge_attribution(loaded, runs, metric, "eap-ig", steps=3, per_prompt=True)
    assert shares.shape == (runs.n_prompts, len(table))
    np.testing.assert_allclose(shares.sum(0), table["score"], rtol=1e-9, atol=1e-12)
    mask = None if runs.attention_mask is None else runs.attention_mask[:1]
    first = PatchingRuns(runs.base_tokens[:1], runs.source_tokens[:1], runs.read_positions[:1],
                         attention_mask=mask, direction=runs.direction)  # fmt: skip
    alone = edge_attribution(loaded, first, metric, "eap-ig", steps=3)
    scale = np.abs(alone["score"]).max()
    np.testing.assert_allclose(shares[0] * runs.n_prompts, alone["score"], atol=1e-4 * scale)
