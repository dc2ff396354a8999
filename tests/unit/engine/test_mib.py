"""MIB circuit files: export then import is the identity, and the names follow MIB's
convention (checked against an independent generator of it)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from circuit_repro.engine.circuits import extract_circuit
from circuit_repro.engine.edges import Graph
from circuit_repro.engine.hooks import model_dims
from circuit_repro.engine.mib import from_mib, read_mib, to_mib, write_mib


def _random_scores(graph: Graph, seed: int = 0) -> pd.DataFrame:
    edges = graph.edges()
    values = np.random.default_rng(seed).normal(size=len(edges))
    return pd.DataFrame(
        {"upstream": [u for u, _ in edges], "downstream": [v for _, v in edges], "score": values}
    )


def mib_edge_names(n_layers: int, n_heads: int) -> set[str]:
    """MIB's edge names for a GPT-2-style model, written from the format's description:
    every earlier writer into each head's q, k and v inputs, each MLP (which also reads
    its own layer's heads) and the logits."""
    writers: list[str] = ["input"]
    names = set()
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for head in heads:
            names |= {f"{w}->{head}<{x}>" for w in writers for x in "qkv"}
        names |= {f"{w}->m{layer}" for w in writers + heads}
        writers += heads + [f"m{layer}"]
    return names | {f"{w}->logits" for w in writers}


@pytest.mark.parametrize("split_qkv", [False, True])
def test_export_then_import_gives_the_same_circuit(tiny_model_id, tiny_model, split_qkv, tmp_path):
    graph = Graph.from_model(tiny_model(tiny_model_id), split_qkv=split_qkv)
    scores = _random_scores(graph)
    circuit = extract_circuit(scores, top_k=25)
    path = tmp_path / "circuit.json"
    write_mib(path, graph, scores, circuit)
    read_scores, read_circuit = read_mib(path, graph)
    assert sorted(read_circuit.edges) == sorted(circuit.edges)
    assert read_circuit.scores == pytest.approx(circuit.scores, rel=1e-12)
    merged = scores.merge(read_scores, on=["upstream", "downstream"], suffixes=("", "_read"))
    assert len(merged) == len(scores)
    np.testing.assert_allclose(merged["score_read"], merged["score"], rtol=1e-12)
    data = json.loads(path.read_text())
    assert sum(e["in_graph"] for e in data["edges"].values()) >= len(circuit.edges)
    assert all(name.count("->") == 1 for name in data["edges"])


def test_gpt2_files_have_mibs_names_cfg_and_node_flags(tiny_model):
    bridge = tiny_model("tiny-gpt2").bridge
    dims = model_dims(bridge)
    n_layers, n_heads = dims["n_layers"], dims["n_heads"]
    graph = Graph.from_model(bridge)
    scores = _random_scores(graph, seed=1)
    circuit = extract_circuit(scores, top_k=10)
    data = to_mib(graph, scores, circuit.edges)
    assert set(data["edges"]) == mib_edge_names(n_layers, n_heads)
    assert data["cfg"] == {
        "n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": False,
        "d_model": dims["d_model"], "n_key_value_heads": n_heads, "per_head_outputs": True,
    }  # fmt: skip
    expected_nodes = ["input"] + [
        name
        for layer in range(n_layers)
        for name in [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
    ]
    assert list(data["nodes"]) == [*expected_nodes, "logits"]
    sources = {u for u, _ in circuit.edges}
    assert {n for n, flag in data["nodes"].items() if flag["in_graph"] and n != "logits"} == sources
    # A q, k, v input shared by one node carries that node's score on all three edges.
    u, v = next((u, v) for u, v in circuit.edges if v.startswith("a"))
    assert {data["edges"][f"{u}->{v}<{x}>"]["score"] for x in "qkv"} == {
        circuit.scores[f"{u}->{v}"]
    }


def test_grouped_key_value_inputs_expand_to_every_head_of_the_group(tiny_model):
    bridge = tiny_model("tiny-llama").bridge
    dims = model_dims(bridge)
    assert dims["n_kv_heads"] < dims["n_heads"]  # the tiny Llama uses grouped-query attention
    graph = Graph.from_model(bridge, split_qkv=True)
    scores = _random_scores(graph, seed=2)
    data = to_mib(graph, scores, [])
    per_group = dims["n_heads"] // dims["n_kv_heads"]
    group_score = scores.set_index(["upstream", "downstream"])["score"][("input", "a0.g0<k>")]
    assert [data["edges"][f"input->a0.h{h}<k>"]["score"] for h in range(per_group)] == [
        group_score
    ] * per_group
    assert set(data["edges"]) == mib_edge_names(dims["n_layers"], dims["n_heads"])


def test_bad_files_are_clear_errors(tiny_model, tmp_path):
    graph = Graph.from_model(tiny_model("tiny-gpt2"))
    scores = _random_scores(graph)
    data = to_mib(graph, scores, [])
    with pytest.raises(ValueError, match="no \\['edges'\\]"):
        from_mib({"cfg": data["cfg"], "nodes": data["nodes"]}, graph)
    with pytest.raises(ValueError, match="n_layers = 99"):
        from_mib({**data, "cfg": {**data["cfg"], "n_layers": 99}}, graph)
    dropped = dict(data["edges"])
    dropped.pop(next(iter(dropped)))
    with pytest.raises(ValueError, match="has no edge input->"):
        from_mib({**data, "edges": dropped}, graph)
    with pytest.raises(ValueError, match="lacks 1 of the graph's edges"):
        to_mib(graph, scores.iloc[1:], [])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_mib(tmp_path / "bad.json", graph)
