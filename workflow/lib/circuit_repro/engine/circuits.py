"""Circuits: keep the top-scoring nodes or edges, save them, measure their faithfulness.

- :func:`extract_circuit` keeps the highest-scoring edges (from
  :func:`~circuit_repro.engine.edges.edge_attribution` or
  :func:`~circuit_repro.engine.edges.exact_edge_patching`) or nodes (from
  :func:`~circuit_repro.engine.attribution.attribution_patching` or a
  :func:`~circuit_repro.engine.patching.patching_sweep` table) as a :class:`Circuit`,
  which reads and writes JSON.
- :func:`circuit_faithfulness` measures how much of the behaviour the circuit alone
  recovers when everything outside it is ablated (Wang et al. 2022; Hanna, Pezzelle
  and Belinkov 2024).
- :func:`top_k_by_magnitude` and :func:`overlap` are the selection and comparison of
  any set of components (e.g. head sets compared across tasks, Merullo et al. 2023).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.edges import (
    Graph,
    Node,
    edge_intervention_hooks,
    graph_hooks_enabled,
    record_outputs,
)
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, ablate, cache_activations, patch
from circuit_repro.engine.metrics import Metric, normalized_effect
from circuit_repro.engine.patching import PatchingRuns, prompt_metric

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel


def top_k_by_magnitude(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``|values|``, largest first; ties go to the lower index."""
    return np.argsort(-np.abs(values), kind="stable")[:k]


def overlap(a: set, b: set) -> tuple[float, int, int]:
    """``(shared / union, shared, union)`` of two sets (0.0 for two empty sets).

    The intersection over union of two circuits, e.g. the heads two tasks share
    (Merullo et al. 2023).
    """
    union = len(a | b)
    shared = len(a & b)
    return (shared / union if union else 0.0), shared, union


#: Kinds with many components per layer, and the model dimension that counts them.
_PER_LAYER_COUNT = {"head": "n_heads", "neuron": "d_mlp"}


def random_component_sets(
    circuit: Sequence[Component],
    dims: Mapping[str, int],
    n_draws: int,
    seed: int = 0,
    crowded: Literal["raise", "whole_layer"] = "raise",
) -> list[list[Component]]:
    """Size-matched random controls for any set of components, matched per kind and layer.

    A claim that some components matter is informative only against the same
    intervention on components drawn at random: a random set of the same size shows how
    much any components would do.

    Heads and neurons: each draw has exactly as many components of that kind in every
    layer (and at every position) as ``circuit``, drawn among that layer's components
    outside it. Kinds with one component per layer (MLP or attention outputs, the
    residual stream): the circuit's count, drawn among the layers outside it. Every
    drawn component keeps its member's position (None = all positions).

    Args:
        circuit: The components under test.
        dims: The model's shape, as :func:`~circuit_repro.engine.hooks.model_dims`.
        n_draws: Number of random sets.
        seed: Seed of ``numpy.random.default_rng``; the same arguments give the same sets.
        crowded: What to do when a layer has fewer heads or neurons outside the circuit
            than the circuit has there: ``raise``, or draw among all of that layer's
            (``whole_layer``; the control may then share members with the circuit).

    Returns:
        ``n_draws`` sorted lists of distinct components.

    Raises:
        ValueError: too few components outside the circuit to match it.
    """
    groups: dict[tuple[str, int, int], list[Component]] = {}
    for c in circuit:
        indexed = c.kind in _PER_LAYER_COUNT
        # -1 stands for "any layer" / "all positions", so that keys sort as numbers.
        key = (c.kind, c.layer if indexed else -1, -1 if c.position is None else c.position)
        groups.setdefault(key, []).append(c)
    pools = {}
    for (kind, layer, _), members in groups.items():
        if kind in _PER_LAYER_COUNT:
            taken, size = {c.index for c in members}, dims[_PER_LAYER_COUNT[kind]]
        else:
            taken, size = {c.layer for c in members}, dims["n_layers"]
        pool = [i for i in range(size) if i not in taken]
        if len(pool) < len(members) and kind in _PER_LAYER_COUNT and crowded == "whole_layer":
            pool = list(range(size))
        if len(pool) < len(members):
            where = f"layer {layer}" if kind in _PER_LAYER_COUNT else "the model"
            raise ValueError(
                f"{where} has {len(pool)} {kind}s outside the set, fewer than "
                f"the {len(members)} a matched control needs"
            )
        pools[(kind, layer, _)] = pool
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        drawn = []
        for key in sorted(groups):
            kind, layer, position = key
            pool = pools[key]
            for i in rng.choice(len(pool), size=len(groups[key]), replace=False):
                at = None if position == -1 else position
                if kind in _PER_LAYER_COUNT:
                    drawn.append(Component(kind, layer, pool[i], at))
                else:
                    drawn.append(Component(kind, pool[i], None, at))
        draws.append(sorted(drawn))
    return draws


def random_head_sets(
    heads: Sequence[tuple[int, int]],
    n_layers: int,
    n_heads: int,
    n_draws: int,
    seed: int = 0,
    match: Literal["layer", "any"] = "layer",
) -> list[list[tuple[int, int]]]:
    """Size-matched random controls for a set of attention heads, as ``(layer, head)``.

    Args:
        heads: The heads under test, ``(layer, head)``.
        n_layers, n_heads: The model's shape (query heads per layer).
        n_draws: Number of random sets.
        seed: Seed of ``numpy.random.default_rng``; the same seed gives the same sets.
        match: ``"layer"``: each set has exactly as many heads in every layer as
            ``heads`` (drawn among that layer's other heads,
            :func:`random_component_sets`); ``"any"``: the same number of heads drawn
            from the whole model.

    Returns:
        ``n_draws`` sorted lists of distinct heads, none of them in ``heads``.

    Raises:
        ValueError: a layer has too few other heads to match ``heads`` there.
    """
    chosen = set(heads)
    if match == "layer":
        dims = {"n_layers": n_layers, "n_heads": n_heads}
        circuit = [Component("head", layer, head) for layer, head in sorted(chosen)]
        try:
            draws = random_component_sets(circuit, dims, n_draws, seed)
        except ValueError as error:
            raise ValueError(f"{error}; use match='any'") from None
        return [[(c.layer, c.index) for c in draw] for draw in draws]
    if match == "any":
        rng = np.random.default_rng(seed)
        pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        pool = [head for head in pool if head not in chosen]
        if len(pool) < len(chosen):
            raise ValueError(f"the model has fewer than {len(chosen)} heads outside the set")
        return [
            sorted(pool[i] for i in rng.choice(len(pool), size=len(chosen), replace=False))
            for _ in range(n_draws)
        ]
    raise ValueError(f"match must be 'layer' or 'any', not {match!r}")


@dataclass
class Circuit:
    """A subgraph kept for faithfulness evaluation.

    Attributes:
        level: ``edge`` (``edges`` lists the kept edges; ``nodes`` their endpoints) or
            ``node`` (``nodes`` lists kept heads/attention layers/MLPs, ``edges`` empty).
        nodes: Node names (see :class:`~circuit_repro.engine.edges.Graph`).
        edges: ``(upstream, downstream)`` name pairs.
        scores: Score of each kept node, or of each edge keyed ``"u->v"``.
        settings: How the circuit was chosen (top_k, threshold, method ...).
    """

    level: Literal["node", "edge"]
    nodes: list[str]
    edges: list[tuple[str, str]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self, path: str | Path) -> None:
        """Write the circuit as JSON."""
        data = asdict(self)
        data["edges"] = [list(edge) for edge in self.edges]
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> Circuit:
        """Read a circuit written by :meth:`to_json`."""
        data = json.loads(Path(path).read_text())
        data["edges"] = [tuple(edge) for edge in data["edges"]]
        return cls(**data)


def _component_node_name(kind: str, layer: int, index) -> str:
    if kind == "head":
        return f"a{layer}.h{int(index)}"
    if kind == "attn_out":
        return f"a{layer}"
    if kind == "mlp_out":
        return f"m{layer}"
    raise ValueError(
        f"a node circuit holds heads, attention layers and MLPs (kinds head, attn_out, "
        f"mlp_out), not {kind!r}"
    )


def _select(values: np.ndarray, top_k: int | None, threshold: float | None) -> list[int]:
    """Indices of the kept items: |score| >= threshold, then the top_k by |score|."""
    if top_k is None and threshold is None:
        raise ValueError("give top_k, threshold or both")
    kept = np.arange(len(values))
    if threshold is not None:
        kept = kept[np.abs(values) >= threshold]
    if top_k is not None:
        # Candidates stay in index order, so ties still go to the lower index.
        kept = kept[top_k_by_magnitude(values[kept], top_k)]
    return sorted(kept.tolist())


def extract_circuit(
    scores: pd.DataFrame | Mapping[str, float],
    top_k: int | None = None,
    threshold: float | None = None,
) -> Circuit:
    """Keep the highest-scoring edges or nodes.

    Args:
        scores: An edge table (:func:`~circuit_repro.engine.edges.edge_attribution` /
            :func:`~circuit_repro.engine.edges.exact_edge_patching`: ``upstream,
            downstream, score``) gives an edge circuit. A component table
            (:func:`~circuit_repro.engine.attribution.attribution_patching`, or
            :func:`~circuit_repro.engine.patching.patching_sweep` with ``base_value``
            added by :func:`~circuit_repro.engine.patching.add_normalized_effect`,
            over ``head``, ``attn_out`` and ``mlp_out`` components at all positions;
            scored by ``score``, else ``value - base_value``) or a mapping ``{node
            name: score}`` gives a node circuit.
        top_k: Keep at most this many items, largest ``|score|`` first
            (:func:`top_k_by_magnitude`).
        threshold: Keep only items with ``|score| >= threshold``.

    Returns:
        A :class:`Circuit`; ``settings`` records top_k, threshold, the number of
        candidates and the table's method/metric/direction when present.
    """
    settings: dict[str, Any] = {"top_k": top_k, "threshold": threshold}
    if isinstance(scores, pd.DataFrame):
        for column in ("method", "metric", "direction"):
            if column in scores and scores[column].nunique() == 1:
                settings[column] = str(scores[column].iloc[0])
    if isinstance(scores, pd.DataFrame) and {"upstream", "downstream"} <= set(scores.columns):
        edges = list(zip(scores["upstream"], scores["downstream"], strict=True))
        values = scores["score"].to_numpy(dtype=np.float64)
        keep = _select(values, top_k, threshold)
        kept = [edges[i] for i in keep]
        nodes = list(dict.fromkeys(name for edge in kept for name in edge))
        settings["n_candidates"] = len(edges)
        return Circuit(
            "edge",
            nodes,
            kept,
            {f"{edges[i][0]}->{edges[i][1]}": float(values[i]) for i in keep},
            settings,
        )
    if isinstance(scores, pd.DataFrame):
        if "position" in scores and scores["position"].notna().any():
            raise ValueError("node circuits need components at all positions (position None)")
        names = [
            _component_node_name(kind, int(layer), index)
            for kind, layer, index in zip(
                scores["kind"], scores["layer"], scores["index"], strict=True
            )
        ]
        if "score" in scores:
            values = scores["score"].to_numpy(dtype=np.float64)
        elif "base_value" in scores:  # a patching table: the effect is value - base
            values = (scores["value"] - scores["base_value"]).to_numpy(dtype=np.float64)
        else:
            raise ValueError(
                "a component table needs a 'score' column (attribution_patching) or "
                "'value' and 'base_value' (patching.add_normalized_effect)"
            )
    else:
        names = list(scores)
        values = np.array([float(scores[name]) for name in names])
    keep = _select(values, top_k, threshold)
    settings["n_candidates"] = len(names)
    return Circuit(
        "node", [names[i] for i in keep], [], {names[i]: float(values[i]) for i in keep}, settings
    )


def _unit_component(node: Node) -> Component:
    if node.kind == "head":
        return Component("head", node.layer, node.index)
    if node.kind == "attn":
        return Component("attn_out", node.layer)
    return Component("mlp_out", node.layer)


@torch.no_grad()
def _node_ablated_metric(
    loaded: LoadedModel,
    runs: PatchingRuns,
    metric: Metric,
    ablated: list[Component],
    source: dict[str, torch.Tensor],
    ablation: str,
) -> float:
    bridge = loaded.bridge
    if ablation == "source":
        context = patch(bridge, ablated, source)
    else:
        context = ablate(bridge, ablated, "mean", reference=source)
    with context:
        values = prompt_metric(loaded, runs.base_tokens, runs, metric)
    return values.double().mean().item()


@torch.no_grad()
def _edge_ablated_metric(
    loaded: LoadedModel,
    runs: PatchingRuns,
    metric: Metric,
    graph: Graph,
    ablated: torch.Tensor,
    replacement: torch.Tensor,
) -> float:
    hooks = edge_intervention_hooks(graph, ablated[None].float(), replacement, runs.n_prompts)
    with loaded.bridge.hooks(fwd_hooks=hooks):
        values = prompt_metric(loaded, runs.base_tokens, runs, metric)
    return values.double().mean().item()


def circuit_faithfulness(
    loaded: LoadedModel,
    runs: PatchingRuns,
    circuit: Circuit,
    metric: Metric,
    ablation: Literal["mean", "source"] = "mean",
    level: Literal["node", "edge"] | None = None,
    graph: Graph | None = None,
) -> dict[str, Any]:
    """Fraction of the metric a circuit recovers when everything else is ablated.

    ``faithfulness = (m_circuit - m_ablated) / (m_full - m_ablated)`` on the base
    prompts, where ``m_full`` is the unablated model, ``m_ablated`` the model with
    every node (or edge) ablated and ``m_circuit`` the model with everything outside
    the circuit ablated (Wang et al. 2022; Hanna et al. 2024). Ablated values are the
    source run's (``source``) or their mean over the source prompts at each position
    (``mean``). 1 for the full model and 0 for the empty circuit, by construction.

    - ``node`` level: heads (or attention layers, see :class:`Graph`) and MLPs outside
      the circuit have their outputs replaced (:func:`circuit_repro.engine.hooks.patch` /
      :func:`~circuit_repro.engine.hooks.ablate`); the embedding and the unembedding are
      always kept, and kept nodes recompute from their (possibly changed) inputs. An
      edge circuit at node level keeps the upstream node of each of its edges.
    - ``edge`` level (edge circuits): every edge ``u -> v`` outside the circuit carries
      the ablated value of ``u`` into ``v``'s input instead of ``u``'s live output, as in
      Hanna et al.'s evaluation; edges from ``input`` count too.

    Returns:
        ``{"faithfulness", "metric_circuit", "metric_full", "metric_ablated", "level",
        "ablation", "n_kept", "n_total"}``; faithfulness is NaN when ``m_full ==
        m_ablated``.
    """
    if ablation not in ("mean", "source"):
        raise ValueError(f"ablation must be 'mean' or 'source', not {ablation!r}")
    level = circuit.level if level is None else level
    if level == "edge" and circuit.level != "edge":
        raise ValueError("edge-level faithfulness needs an edge circuit")
    graph = Graph.from_model(loaded) if graph is None else graph
    with torch.no_grad():
        full = prompt_metric(loaded, runs.base_tokens, runs, metric)
    metric_full = full.double().mean().item()

    if level == "node":
        units = graph.upstream[1:]
        kept = {u for u, _ in circuit.edges} if circuit.level == "edge" else set(circuit.nodes)
        unknown = kept - {node.name for node in graph.upstream}
        if unknown:
            raise ValueError(f"nodes not in the model's graph: {sorted(unknown)}")
        components = {node.name: _unit_component(node) for node in units}
        names = sorted({c.hook_name for c in components.values()})
        with torch.no_grad(), cache_activations(loaded.bridge, names) as source:
            logits_at(loaded, runs.source_tokens, runs.read_positions, runs.attention_mask)
        outside = [components[node.name] for node in units if node.name not in kept]
        metric_circuit = _node_ablated_metric(loaded, runs, metric, outside, source, ablation)
        metric_ablated = _node_ablated_metric(
            loaded, runs, metric, list(components.values()), source, ablation
        )
        n_kept, n_total = sum(node.name in kept for node in units), len(units)
    else:
        up_index = {node.name: i for i, node in enumerate(graph.upstream)}
        down_index = {node.name: i for i, node in enumerate(graph.downstream)}
        in_circuit = torch.zeros(len(graph.upstream), len(graph.downstream), dtype=torch.bool)
        for u, v in circuit.edges:
            if (
                u not in up_index
                or v not in down_index
                or not graph.edge_mask[up_index[u], down_index[v]]
            ):
                raise ValueError(f"{u} -> {v} is not an edge of the model's graph")
            in_circuit[up_index[u], down_index[v]] = True
        with graph_hooks_enabled(loaded.bridge):
            source_out = record_outputs(
                loaded, graph, runs.source_tokens, runs.read_positions, runs.attention_mask
            )
            replacement = source_out if ablation == "source" else source_out.mean(0, keepdim=True)
            edge_mask = graph.edge_mask
            metric_circuit = _edge_ablated_metric(
                loaded, runs, metric, graph, edge_mask & ~in_circuit, replacement
            )
            metric_ablated = _edge_ablated_metric(
                loaded, runs, metric, graph, edge_mask, replacement
            )
        n_kept, n_total = int(in_circuit.sum()), int(graph.edge_mask.sum())

    # The circuit's normalised effect: 0 = everything ablated, 1 = the full model.
    gap = metric_full - metric_ablated
    faithfulness = math.nan
    if gap != 0:
        faithfulness = normalized_effect(metric_circuit, metric_ablated, metric_full)
    return {
        "faithfulness": faithfulness,
        "metric_circuit": metric_circuit,
        "metric_full": metric_full,
        "metric_ablated": metric_ablated,
        "level": level,
        "ablation": ablation,
        "n_kept": n_kept,
        "n_total": n_total,
    }
