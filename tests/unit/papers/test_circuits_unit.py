"""The MIB circuit-localisation unit: node-level AtP against EAP's row sums, node
circuits, the exact method over candidates, the per-prompt table's ends against plain
runs, paired area differences, the planted circuit, and the unit's registration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_repro.engine.edges import Graph, edge_attribution, exact_edge_patching
from circuit_repro.engine.faithfulness import faithfulness_curve, node_circuit_masks
from circuit_repro.engine.hooks import kv_group
from circuit_repro.engine.patching import prompt_metric
from circuit_repro.papers import PAPERS
from circuit_repro.papers.circuits import PERCENTAGES, CircuitsSettings, task_model
from circuit_repro.papers.circuits.claims import circuits_claims
from circuit_repro.papers.circuits.evaluation import (
    area_difference,
    evaluate_task,
    exact_over_candidates,
    method_areas,
    node_attribution,
    task_runs,
)
from circuit_repro.papers.circuits.planted import planted_recovery
from circuit_repro.tasks import generate_task


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def ioi(loaded, n_prompts: int = 6):
    return generate_task("ioi", loaded.tokenizer, {"n_prompts": n_prompts}, seed=2)


def test_node_attribution_is_the_row_sum_of_eap(tiny_model_id, tiny_model):
    """AtP of a node's output and EAP of its outgoing edges take the same first-order
    step: each reader's input is its own copy of the stream, so d metric / d out_u is the
    sum of d metric / d in_v over u's readers (two code paths: attribution.py on hook_z,
    edges.py on the split inputs)."""
    loaded = tiny_model(tiny_model_id)
    runs, metric = task_runs(loaded.tokenizer, ioi(loaded), "ioi")
    graph = Graph.from_model(loaded)
    nodes = node_attribution(loaded, runs, metric, graph)
    rows = edge_attribution(loaded, runs, metric, "eap", graph=graph).groupby("upstream")["score"]
    expected = rows.sum().reindex(nodes["node"]).to_numpy()
    np.testing.assert_allclose(nodes["score"].to_numpy(), expected, rtol=1e-4, atol=1e-6)


def test_node_circuits_keep_the_edges_between_their_nodes(tiny_model):
    loaded = tiny_model("tiny-llama")  # grouped K/V heads: 4 query heads, 2 K/V heads
    graph = Graph.from_model(loaded)
    names = [node.name for node in graph.upstream]
    scores = pd.DataFrame({"node": names, "score": np.arange(len(names), 0, -1.0)})
    masks = node_circuit_masks(graph, scores, [0, 2, len(names)])
    assert not masks[0].any()
    assert torch.equal(masks[2], graph.edge_mask)
    kept = set(names[:2])  # input and a0.h0
    for u, v in masks[1].nonzero().tolist():
        assert names[u] in kept
        reader = graph.downstream[v]
        if reader.kind == "kv":
            assert kv_group(0, 4, 2) == reader.index and reader.layer == 0
        elif reader.kind != "logits":
            assert reader.name.startswith("a0.h0")
    assert masks[1][0, [v.name for v in graph.downstream].index("logits")]


def test_exact_over_candidates_patches_the_top_edges_and_ranks_them_first(tiny_model):
    loaded = tiny_model("tiny-gpt2")
    runs, metric = task_runs(loaded.tokenizer, ioi(loaded), "ioi")
    graph = Graph.from_model(loaded)
    ranking = edge_attribution(loaded, runs, metric, "eap-ig", graph=graph)
    every = exact_over_candidates(loaded, runs, metric, graph, ranking, 0)
    exact = exact_edge_patching(loaded, runs, metric, graph=graph)
    assert every["patched"].all()
    np.testing.assert_allclose(every["score"], exact["score"], rtol=1e-6, atol=1e-9)
    some = exact_over_candidates(loaded, runs, metric, graph, ranking, 10)
    assert some["patched"].sum() == 10
    moved = some[some["patched"] & (some["score"] != 0)]["score"].abs()
    assert moved.min() > some.loc[~some["patched"], "score"].abs().max()


def test_evaluation_ends_are_the_clean_and_the_counterfactual_runs(tiny_model):
    loaded = tiny_model("tiny-neox")
    records = ioi(loaded)
    settings = CircuitsSettings(n_prompts=6, exact_edges=8, bootstrap_samples=50)
    result = evaluate_task(loaded, records, "ioi", settings)
    runs, metric = task_runs(loaded.tokenizer, records, "ioi")
    table = result.prompt_metrics.set_index("method")
    values = table.filter(regex=r"^p\d+$")
    with torch.no_grad():
        clean = prompt_metric(loaded, runs.base_tokens, runs, metric).double().numpy()
        counterfactual = prompt_metric(loaded, runs.source_tokens, runs, metric).double().numpy()
    np.testing.assert_allclose(values.loc["full"], clean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values.loc["empty"], counterfactual, rtol=1e-5, atol=1e-5)
    assert len(table) == 5 * len(PERCENTAGES) + 2
    curves, areas = method_areas(result.prompt_metrics, 50, 0.95, 0)
    at_full = curves[curves["percentage"] == 1.0]
    np.testing.assert_allclose(at_full["faithfulness"], 1.0, atol=1e-5)  # every method
    assert set(areas["method"]) == {"exact", "atp", "eap", "eap-ig", "random"}
    assert (result.methods["seconds"] >= 0).all()
    node_curve, node_areas = faithfulness_curve(
        loaded, runs, metric, result.node_scores["atp"], PERCENTAGES, graph=result.graph,
        bootstrap_samples=50, level="node",
    )  # fmt: skip
    atp = values.loc["atp"].mean(axis=1).to_numpy()
    np.testing.assert_allclose(node_curve["metric"], atp, rtol=1e-5, atol=1e-6)
    assert node_curve["n_nodes"].iloc[-1] == node_areas["n_nodes"] == len(result.graph.upstream)


def test_area_difference_is_paired_over_prompts():
    rng = np.random.default_rng(0)
    rows = [("a", p, 0, *(rng.normal(size=8) + p)) for p in PERCENTAGES]
    rows += [("b", p, 0, *(rng.normal(size=8) + 2 * p)) for p in PERCENTAGES]
    rows += [
        ("empty", 0.0, 0, *rng.normal(size=8) * 0.1),
        ("full", 1.0, 0, *(3 + rng.normal(size=8))),
    ]
    table = pd.DataFrame(
        rows, columns=["method", "percentage", "count", *[f"p{i}" for i in range(8)]]
    )
    assert area_difference(table, "a", "a", "cpr", 100, 0.95, 0) == (0.0, 0.0, 0.0, 8)
    value, low, high, _ = area_difference(table, "b", "a", "cpr", 200, 0.95, 0)
    _, areas = method_areas(table, 10, 0.95, 0)
    by = areas.set_index("method")["cpr"]
    assert value == pytest.approx(by["b"] - by["a"])
    assert low <= value <= high


def test_exact_patching_recovers_the_planted_circuit_through_the_unit(tiny_model):
    from circuit_repro.models.load import load_bridge
    from circuit_repro.models.prepare import ensure_prepared

    table = planted_recovery(load_bridge(ensure_prepared("tiny-qwen2")), "tiny-qwen2")
    by = table.set_index("method")["auroc"]
    assert by["exact"] == 1.0
    assert by["random"] < 0.9


def test_claims_are_judged_and_gated_on_the_task_baseline():
    rng = np.random.default_rng(1)
    rows = []
    for method, slope in (("eap", 1.0), ("eap-ig", 3.0), ("random", 0.2)):
        rows += [(method, p, 0, *(np.minimum(1, slope * p * 10) + 0.01 * rng.normal(size=12)))
                 for p in PERCENTAGES]  # fmt: skip
    rows += [("empty", 0.0, 0, *np.zeros(12)), ("full", 1.0, 0, *np.ones(12))]
    table = pd.DataFrame(
        rows, columns=["method", "percentage", "count", *[f"p{i}" for i in range(12)]]
    )
    baseline = {"task": "ioi", "accuracy": 0.9, "accuracy_ci_low": 0.8, "chance": 0.5,
                "near_chance": False}  # fmt: skip
    settings = CircuitsSettings(bootstrap_samples=200)
    claims = circuits_claims("m", {"ioi": table}, {"ioi": "m"}, {"ioi": baseline}, settings)
    assert set(claims["verdict"]) == {"reproduced"}
    at_chance = circuits_claims("m", {"ioi": table}, {"ioi": "m"},
                                {"ioi": {**baseline, "near_chance": True}}, settings)  # fmt: skip
    assert set(at_chance["verdict"]) == {"inconclusive: model at chance"}


def test_the_unit_is_off_by_default_and_on_in_the_quick_preset():
    paper = PAPERS["circuits"]
    assert paper.schema()["properties"]["enabled"]["default"] is False
    assert paper.presets["quick"]["enabled"] is True
    config = {"models": ["smollm2-135m"], "mcqa": {}}
    assert task_model(config, "smollm2-135m", "ioi") == "smollm2-135m"
    assert task_model(config, "smollm2-135m", "mcqa").startswith("smollm2-135m-sft@step")
