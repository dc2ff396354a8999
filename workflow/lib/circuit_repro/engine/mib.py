"""Circuits in the format of MIB's circuit-localisation track.

The Mechanistic Interpretability Benchmark (Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark"; code in ``hannamw/MIB-circuit-track``) exchanges a circuit
as one JSON object:

- ``cfg``: the model's shape, ``n_layers``, ``n_heads``, ``parallel_attn_mlp`` and
  ``d_model`` (we add ``n_key_value_heads`` and ``per_head_outputs``, which MIB's
  loader ignores);
- ``nodes``: ``{name: {"in_graph": bool}}`` for ``input``, every head ``a{L}.h{H}``,
  every MLP ``m{L}`` and ``logits``;
- ``edges``: ``{"u->v": {"score": float, "in_graph": bool}}`` for every edge of the
  graph, where a head's input is split into its query, key and value copies
  (``a3.h1->a5.h2<q>``, ``<k>``, ``<v>``) and MLPs and the logits read one copy each
  (``a3.h1->m5``, ``m11->logits``).

Our :class:`~circuit_repro.engine.edges.Graph` uses the same names, so for a model with
one key and value head per query head, per-head outputs and ``split_qkv=True`` the
conversion is one to one. Where our graph is coarser it is expanded on export and
collapsed back on import, so that export then import is the identity:

- a head input that feeds query, key and value together (``split_qkv=False``) becomes
  three MIB edges with the same score and flag;
- under grouped-query attention a K/V group's input (``a{L}.g{G}<k>``, ``<v>``, or
  ``<kv>`` for both) becomes one edge per query head of the group, each with the
  group's score and flag (patching a group's key changes every head of the group);
- with a norm after the attention output (Gemma 2/3) the upstream node is the whole
  layer ``a{L}``; it is written as ``a{L}`` (not an MIB name) and ``cfg`` says
  ``per_head_outputs: false``.

Importing collapses an expanded edge to its group: its score is the mean of the
expansions' scores (all equal in our own files) and it is in the circuit when any of
them is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_repro.engine.circuits import Circuit
from circuit_repro.engine.edges import Graph, Node

#: Keys of an MIB circuit file.
MIB_KEYS = ("cfg", "nodes", "edges")

_GROUPED = re.compile(r"^a(\d+)\.g(\d+)<(k|v|kv)>$")


def mib_config(graph: Graph, n_heads: int, n_kv_heads: int) -> dict[str, Any]:
    """The ``cfg`` block of a circuit file for ``graph``'s model."""
    return {
        "n_layers": graph.n_layers,
        "n_heads": n_heads,
        "parallel_attn_mlp": graph.parallel_attn_mlp,
        "d_model": graph.d_model,
        "n_key_value_heads": n_kv_heads,
        "per_head_outputs": graph.per_head_outputs,
    }


def _head_counts(graph: Graph) -> tuple[int, int]:
    """``(n_heads, n_kv_heads)`` read off the graph's downstream nodes."""
    layer0 = [n for n in graph.downstream if n.layer == 0]
    n_heads = len({n.index for n in layer0 if n.kind == "head"})
    kv = [n for n in layer0 if n.kind == "kv"]
    return n_heads, (len({n.index for n in kv}) if kv else n_heads)


def mib_names(node: Node, n_heads: int, n_kv_heads: int) -> list[str]:
    """The MIB downstream names that our downstream ``node`` stands for."""
    if node.kind == "head" and "<" not in node.name:  # query, key and value together
        return [f"{node.name}<{letter}>" for letter in "qkv"]
    grouped = _GROUPED.match(node.name)
    if grouped:
        layer, group, letters = int(grouped[1]), int(grouped[2]), grouped[3]
        per_group = n_heads // n_kv_heads
        heads = range(group * per_group, (group + 1) * per_group)
        return [f"a{layer}.h{h}<{letter}>" for letter in letters for h in heads]
    return [node.name]


def to_mib(
    graph: Graph,
    scores: pd.DataFrame,
    in_circuit: Iterable[tuple[str, str]],
) -> dict[str, Any]:
    """A circuit as an MIB circuit object (see the module docstring).

    Args:
        graph: The model's graph (:meth:`Graph.from_model`).
        scores: An edge table with ``upstream``, ``downstream`` and ``score`` for every
            edge of ``graph`` (:func:`~circuit_repro.engine.edges.edge_attribution`,
            :func:`~circuit_repro.engine.edges.exact_edge_patching`).
        in_circuit: The circuit's edges ``(upstream, downstream)`` (e.g.
            :attr:`Circuit.edges`).

    Returns:
        ``{"cfg", "nodes", "edges"}``; a node is in the graph when an edge of the
        circuit leaves it (``logits``: when one enters it).
    """
    n_heads, n_kv = _head_counts(graph)
    by_edge = {
        (u, v): float(s)
        for u, v, s in zip(scores["upstream"], scores["downstream"], scores["score"], strict=True)
    }
    kept = set(in_circuit)
    unknown = kept - set(graph.edges())
    if unknown:
        raise ValueError(f"edges not in the model's graph: {sorted(unknown)[:5]}")
    missing = [edge for edge in graph.edges() if edge not in by_edge]
    if missing:
        raise ValueError(
            f"the score table lacks {len(missing)} of the graph's edges (e.g. "
            f"{missing[0][0]} -> {missing[0][1]}); score every edge before exporting"
        )
    edges: dict[str, dict[str, Any]] = {}
    for v, node in enumerate(graph.downstream):
        names = mib_names(node, n_heads, n_kv)
        for u in range(graph.n_feeding(v)):
            upstream = graph.upstream[u].name
            entry = {
                "score": by_edge[(upstream, node.name)],
                "in_graph": (upstream, node.name) in kept,
            }
            for name in names:
                edges[f"{upstream}->{name}"] = dict(entry)
    sources = {u for u, _ in kept}
    nodes = {node.name: {"in_graph": node.name in sources} for node in graph.upstream}
    nodes["logits"] = {"in_graph": any(v == "logits" for _, v in kept)}
    return {"cfg": mib_config(graph, n_heads, n_kv), "nodes": nodes, "edges": edges}


def from_mib(data: Mapping[str, Any], graph: Graph) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """``(scores, in_circuit)`` from an MIB circuit object, on ``graph``'s edges.

    Raises:
        ValueError: when a key is missing, the file's ``cfg`` does not match the model,
            or an edge of the graph is absent from the file.
    """
    absent = [key for key in MIB_KEYS if key not in data]
    if absent:
        raise ValueError(f"not an MIB circuit: no {absent} (expected keys {list(MIB_KEYS)})")
    n_heads, n_kv = _head_counts(graph)
    expected = mib_config(graph, n_heads, n_kv)
    for key in ("n_layers", "n_heads", "d_model", "parallel_attn_mlp"):
        if key in data["cfg"] and data["cfg"][key] != expected[key]:
            raise ValueError(
                f"the circuit is for a model with {key} = {data['cfg'][key]}, this one has "
                f"{expected[key]}"
            )
    edges = data["edges"]
    rows, kept = [], []
    for v, node in enumerate(graph.downstream):
        names = mib_names(node, n_heads, n_kv)
        for u in range(graph.n_feeding(v)):
            upstream = graph.upstream[u].name
            entries = [edges.get(f"{upstream}->{name}") for name in names]
            if any(entry is None for entry in entries):
                name = names[[entry is None for entry in entries].index(True)]
                raise ValueError(f"the circuit file has no edge {upstream}->{name}")
            score = sum(float(entry["score"]) for entry in entries) / len(entries)
            rows.append({"upstream": upstream, "downstream": node.name, "score": score})
            if any(bool(entry["in_graph"]) for entry in entries):
                kept.append((upstream, node.name))
    return pd.DataFrame(rows), kept


def write_mib(path: str | Path, graph: Graph, scores: pd.DataFrame, circuit: Circuit) -> None:
    """Write ``circuit`` (an edge circuit) with every edge's score as an MIB JSON file."""
    if circuit.level != "edge":
        raise ValueError("MIB's circuit format holds edge circuits; this one is a node circuit")
    Path(path).write_text(json.dumps(to_mib(graph, scores, circuit.edges)) + "\n")


def read_mib(path: str | Path, graph: Graph) -> tuple[pd.DataFrame, Circuit]:
    """Read an MIB JSON file: the edge scores and the circuit (its in-graph edges)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    scores, kept = from_mib(data, graph)
    lookup = {
        (u, v): s for u, v, s in scores[["upstream", "downstream", "score"]].itertuples(index=False)
    }
    circuit = Circuit(
        "edge",
        list(dict.fromkeys(name for edge in kept for name in edge)),
        kept,
        {f"{u}->{v}": float(lookup[(u, v)]) for u, v in kept},
        {"source": str(path), "n_candidates": len(scores)},
    )
    return scores, circuit
