"""Faithfulness curves (MIB's CPR and CMD), edge AUROC and a planted circuit, on tiny
models, against hand computations and the one-circuit evaluation of engine.circuits."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_repro.engine.circuits import circuit_faithfulness, extract_circuit
from circuit_repro.engine.edges import (
    Graph,
    edge_attribution,
    edge_intervention_hooks,
    exact_edge_patching,
    graph_hooks_enabled,
    record_outputs,
)
from circuit_repro.engine.faithfulness import (
    circuit_prompt_metrics,
    curve_areas,
    edge_auroc,
    faithfulness_curve,
    plant_circuit,
    top_edge_masks,
)
from circuit_repro.engine.metrics import LogitDiffMetric
from circuit_repro.engine.patching import PatchingRuns, prompt_metric, runs_from_records
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.tasks import generate_task


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def ioi_runs(loaded, n_prompts: int = 6):
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": n_prompts}, seed=1)
    return runs_from_records(loaded.tokenizer, records)


def random_scores(graph: Graph, seed: int = 0) -> pd.DataFrame:
    edges = graph.edges()
    values = np.random.default_rng(seed).normal(size=len(edges))
    return pd.DataFrame({"upstream": [u for u, _ in edges], "downstream": [v for _, v in edges],
                         "score": values})  # fmt: skip


def test_curve_areas_by_hand():
    assert curve_areas([0, 0.5, 1], [0, 0.5, 1]) == pytest.approx((0.5, 0.5))
    # f = 1 everywhere: CPR is the width, CMD zero; overshoot counts in CMD.
    assert curve_areas([0.1, 0.5], [1, 1]) == pytest.approx((0.4, 0.0))
    assert curve_areas([0, 1], [1.5, 0.5]) == pytest.approx((1.0, 0.5))
    with pytest.raises(ValueError, match="at least two points"):
        curve_areas([0.5], [1.0])


def test_edge_auroc_is_the_share_of_true_false_pairs_ranked_right():
    rng = np.random.default_rng(3)
    scores = pd.DataFrame(
        {
            "upstream": [f"u{i}" for i in range(40)],
            "downstream": "v",
            "score": np.round(rng.normal(size=40), 1),
        }
    )  # fmt: skip (ties)
    truth = [(f"u{i}", "v") for i in range(0, 40, 3)]
    magnitude = dict(zip(scores["upstream"], scores["score"].abs(), strict=True))
    true_names = {u for u, _ in truth}
    pairs = [
        1.0 if magnitude[t] > magnitude[f] else 0.5 if magnitude[t] == magnitude[f] else 0.0
        for t, f in itertools.product(true_names, set(magnitude) - true_names)
    ]
    assert edge_auroc(scores, truth) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match="both circuit edges and other edges"):
        edge_auroc(scores, [])


def test_top_edge_masks_keep_the_largest_magnitudes(tiny_model):
    graph = Graph.from_model(tiny_model("tiny-gpt2"))
    scores = random_scores(graph)
    masks = top_edge_masks(graph, scores, [0, 5, 40])
    assert masks.sum((1, 2)).tolist() == [0, 5, 40]
    top5 = set(extract_circuit(scores, top_k=5).edges)
    up = [n.name for n in graph.upstream]
    down = [n.name for n in graph.downstream]
    assert {(up[u], down[v]) for u, v in masks[1].nonzero().tolist()} == top5
    assert not (masks & ~graph.edge_mask).any()


def test_the_full_circuit_has_faithfulness_one_and_the_empty_circuit_zero(
    tiny_model_id, tiny_model
):
    loaded = tiny_model(tiny_model_id)
    runs, metric = ioi_runs(loaded)
    graph = Graph.from_model(loaded)
    curve, areas = faithfulness_curve(loaded, runs, metric, random_scores(graph),
                                      percentages=(0.0, 0.05, 1.0), graph=graph,
                                      bootstrap_samples=200)  # fmt: skip
    assert curve["faithfulness"].iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-5)
    assert curve["n_edges"].tolist() == [0, int(0.05 * areas["n_edges"]), areas["n_edges"]]
    assert abs(areas["metric_full"] - areas["metric_empty"]) > 1e-3
    assert areas["cpr_low"] <= areas["cpr"] <= areas["cpr_high"]
    assert areas["cmd_low"] <= areas["cmd"] <= areas["cmd_high"]


@pytest.mark.parametrize("ablation", ["source", "mean"])
def test_each_size_equals_the_one_circuit_evaluation(tiny_model, ablation):
    """The batched curve against engine.circuits.circuit_faithfulness, one circuit at a
    time (a separate forward pass per circuit)."""
    loaded = tiny_model("tiny-llama")
    runs, metric = ioi_runs(loaded)
    graph = Graph.from_model(loaded)
    scores = random_scores(graph, seed=5)
    percentages = (0.01, 0.1, 0.3)
    curve, _ = faithfulness_curve(loaded, runs, metric, scores, percentages, ablation,
                                  graph=graph, bootstrap_samples=50)  # fmt: skip
    for row in curve.itertuples():
        circuit = extract_circuit(scores, top_k=int(row.n_edges))
        one = circuit_faithfulness(loaded, runs, circuit, metric, ablation, graph=graph)
        assert row.faithfulness == pytest.approx(one["faithfulness"], abs=1e-5)
        assert row.metric == pytest.approx(one["metric_circuit"], rel=1e-5, abs=1e-6)


def random_token_runs(loaded, n_prompts: int = 6, length: int = 10):
    """Base and source prompts of random tokens that differ at every position, so that
    every edge of a planted circuit can move the metric (with IOI prompts, whose last
    token is the same in both, an edge from the embedding into the final position's
    query carries no change)."""
    generator = torch.Generator().manual_seed(0)
    vocab = loaded.bridge.cfg.d_vocab
    base = torch.randint(0, vocab // 2, (n_prompts, length), generator=generator)
    source = base + vocab // 2
    read = torch.full((n_prompts,), length - 1)
    metric = LogitDiffMetric(torch.full((n_prompts,), 3), torch.full((n_prompts,), 7))
    return PatchingRuns(base, source, read, direction="source -> base"), metric


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-neox"])
def test_exact_patching_recovers_a_planted_circuit_with_auroc_one(model_id):
    loaded = load_bridge(ensure_prepared(model_id))  # a private copy: weights change
    runs, metric = random_token_runs(loaded)
    graph = Graph.from_model(loaded)
    planted = plant_circuit(loaded, heads=[(0, 1), (1, 0), (1, 3)], mlps=[0], graph=graph)
    assert 0 < len(planted) < len(graph.edges())
    exact = exact_edge_patching(loaded, runs, metric, graph=graph)
    assert edge_auroc(exact, planted) == 1.0
    outside = ~exact.set_index(["upstream", "downstream"]).index.isin(planted)
    assert (exact.loc[outside, "score"] == 0).all()  # dead writers and readers change nothing
    eap = edge_attribution(loaded, runs, metric, graph=graph, method="eap")
    assert edge_auroc(eap, planted) > 0.9


def _transformer_lens_circuit(circuit_edges, n_layers: int, length: int):
    """Our position-free edges as TransformerLens 4.3's per-position edge set."""
    from transformer_lens.tools.analysis.attribution_patching import Node as TLNode

    def writer(name: str, p: int):
        if name == "input":
            return TLNode("embed", p)
        if name.startswith("m"):
            return TLNode("mlp_out", p, int(name[1:]))
        layer, head = name[1:].split(".h")
        return TLNode("attn_head_out", p, int(layer), int(head))

    def readers(name: str, p: int):
        if name == "logits":
            return [TLNode("logits", p, n_layers - 1)]
        if name.startswith("m"):
            return [TLNode("mlp_in", p, int(name[1:]))]
        layer, head = name[1:].split(".h")
        return [TLNode(f"{x}_input", p, int(layer), int(head)) for x in "qkv"]

    return [
        (writer(u, p), r) for u, v in circuit_edges for p in range(length) for r in readers(v, p)
    ]


def test_agrees_with_transformer_lens_faithfulness_where_the_definitions_coincide(tiny_model):
    """TransformerLens 4.3's ablate-outside ``faithfulness`` takes one pair at a time on
    multi-head models whose heads sum into the stream (GPT-2 here); its graph is per
    position, so our edge stands for itself at every position. With the corrupt
    (source) values as ablations, its gap (clean - corrupt) is our m(N) - m(empty)."""
    from transformer_lens.tools.analysis.attribution_patching import faithfulness

    loaded = tiny_model("tiny-gpt2")
    graph = Graph.from_model(loaded)
    scores = random_scores(graph, seed=11)
    n_layers = loaded.bridge.cfg.n_layers
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": 4}, seed=2)
    for record in records[:2]:
        runs, metric = runs_from_records(loaded.tokenizer, [record])
        read = int(runs.read_positions[0])
        answer, other = int(metric.correct_ids[0]), int(metric.wrong_ids[0])
        curve, _ = faithfulness_curve(loaded, runs, metric, scores, (0.05, 0.2, 0.6),
                                      graph=graph, bootstrap_samples=10)  # fmt: skip
        for row in curve.itertuples():
            kept = extract_circuit(scores, top_k=int(row.n_edges)).edges
            result = faithfulness(
                loaded.bridge, runs.base_tokens, runs.source_tokens,
                lambda logits, read=read, a=answer, b=other: logits[0, read, a] - logits[0, read, b],
                _transformer_lens_circuit(kept, n_layers, runs.base_tokens.shape[1]),
            )  # fmt: skip
            gap = result.full_metric - result.corrupt_metric
            ablated = result.corrupt_metric + result.recovered * gap
            # The metrics agree to float32 precision; f divides by a small gap on a
            # random model, so it agrees to a relative 1e-3.
            assert row.metric == pytest.approx(ablated, rel=1e-4, abs=1e-6)
            assert row.faithfulness == pytest.approx(result.recovered, rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("ablation", ["source", "mean"])
def test_smaller_side_ablation_equals_the_dense_edge_intervention(
    tiny_model_id, tiny_model, ablation
):
    """circuit_ablation_hooks (rebuild a reader's input from the kept edges, or subtract
    the removed ones, whichever is fewer) against edge_intervention_hooks (every edge's
    coefficient), on random circuits of every density, sparse and dense readers mixed."""
    loaded = tiny_model(tiny_model_id)
    runs, metric = ioi_runs(loaded)
    graph = Graph.from_model(loaded)
    generator = torch.Generator().manual_seed(11)
    densities = torch.tensor([0.0, 0.05, 0.3, 0.7, 0.95, 1.0])[:, None, None]
    masks = torch.rand(len(densities), *graph.edge_mask.shape, generator=generator) < densities
    masks &= graph.edge_mask
    fast = circuit_prompt_metrics(loaded, runs, metric, graph, masks, ablation, variants_per_pass=3)
    with graph_hooks_enabled(loaded.bridge):
        source = record_outputs(
            loaded, graph, runs.source_tokens, runs.read_positions, runs.attention_mask
        )
        replacement = source if ablation == "source" else source.mean(0, keepdim=True)
        for k, mask in enumerate(masks):
            coefficients = (graph.edge_mask & ~mask).float()[None]
            hooks = edge_intervention_hooks(graph, coefficients, replacement, runs.n_prompts)
            with loaded.bridge.hooks(fwd_hooks=hooks):
                dense = prompt_metric(loaded, runs.base_tokens, runs, metric).double()
            torch.testing.assert_close(fast[k], dense, rtol=1e-5, atol=1e-5)


def test_identical_circuits_run_once(tiny_model, monkeypatch):
    import circuit_repro.engine.faithfulness as faithfulness

    loaded = tiny_model("tiny-gpt2")
    runs, metric = ioi_runs(loaded)
    graph = Graph.from_model(loaded)
    masks = top_edge_masks(graph, random_scores(graph), [3, 10, 3, len(graph.edges())])
    masks = torch.cat([masks, graph.edge_mask[None]])  # the full graph twice
    variants = []
    real = faithfulness.circuit_ablation_hooks

    def counting(graph, chunk, replacement, n_prompts):
        variants.append(len(chunk))
        return real(graph, chunk, replacement, n_prompts)

    monkeypatch.setattr(faithfulness, "circuit_ablation_hooks", counting)
    values = circuit_prompt_metrics(loaded, runs, metric, graph, masks, variants_per_pass=1)
    assert sum(variants) == 3
    assert torch.equal(values[0], values[2]) and torch.equal(values[3], values[4])
    one = circuit_prompt_metrics(loaded, runs, metric, graph, masks[1:2])
    torch.testing.assert_close(values[1], one[0], rtol=1e-6, atol=1e-7)
