"""How good a discovered circuit is: faithfulness curves over circuit sizes, their areas,
and recovery of a known circuit.

MIB's circuit-localisation track (Mueller et al. 2025) scores a method's edge scores,
not one circuit: for each size ``p`` (a share of the graph's edges, 0.1% to 100%), the
circuit ``C_p`` is the top ``int(p * n_edges)`` edges by ``|score|``, every edge outside
it carries the counterfactual (``source``) value, or the mean over the source prompts
(``mean``), and

    f(C_p) = (m(C_p) - m(empty)) / (m(N) - m(empty))

where ``m`` is the task metric averaged over prompts, ``N`` the full model and
``empty`` the model with every edge ablated. The curve's trapezoid areas over ``p``
(linear in ``p``, as MIB's default) are the CPR (integrated ``f``; higher is better)
and the CMD (integrated ``|1 - f|``; lower is better).

- :func:`faithfulness_curve`: the curve, CPR and CMD with bootstrap CIs over prompts.
  Every size is one variant of a batched forward pass
  (:func:`~circuit_repro.engine.edges.circuit_ablation_hooks`), so the whole curve
  costs about ``n_sizes + 2`` forward passes of the prompts.
- :func:`curve_areas`: CPR and CMD of a curve.
- :func:`edge_auroc`: how well scores separate a known circuit's edges from the rest
  (MIB's InterpBench track), as the Mann-Whitney AUROC of ``|score|``.

Unlike MIB's evaluation we do not prune edges left dangling by the top-n cut (an edge
whose reader has no path to the logits within the circuit): a dangling edge into a
node is still live in our ablation, so at small sizes our ``f`` can differ from MIB's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.circuits import top_k_by_magnitude
from circuit_repro.engine.edges import (
    Graph,
    circuit_ablation_hooks,
    graph_hooks_enabled,
    record_outputs,
)
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import kv_group, model_dims
from circuit_repro.engine.metrics import Metric
from circuit_repro.engine.patching import PatchingRuns
from circuit_repro.engine.stats import bootstrap, percentile_interval

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel

#: Bytes the record of every upstream output may take in one pass of
#: :func:`circuit_prompt_metrics` (it sets how many circuits share a pass).
OUTPUTS_BUDGET_BYTES = 2e9

#: MIB's circuit sizes: shares of the graph's edges.
MIB_PERCENTAGES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def curve_areas(percentages: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """``(CPR, CMD)``: trapezoid areas of ``f`` and of ``|1 - f|`` over ``percentages``."""
    x = np.asarray(percentages, dtype=np.float64)
    f = np.asarray(faithfulness, dtype=np.float64)
    if x.shape != f.shape or x.size < 2:
        raise ValueError("a curve needs at least two points, one faithfulness per size")
    widths = np.diff(x)
    cpr = float(np.sum(widths * (f[:-1] + f[1:]) / 2))
    gaps = np.abs(1.0 - f)
    cmd = float(np.sum(widths * (gaps[:-1] + gaps[1:]) / 2))
    return cpr, cmd


def edge_score_matrix(graph: Graph, scores: pd.DataFrame) -> torch.Tensor:
    """``[n_upstream, n_downstream]`` float64 scores from an edge table (0 off-graph).

    Raises:
        ValueError: when an edge of the graph has no score or a row names no edge.
    """
    up = {node.name: i for i, node in enumerate(graph.upstream)}
    down = {node.name: i for i, node in enumerate(graph.downstream)}
    edge_mask = graph.edge_mask  # a property that builds the mask: once, not per edge
    matrix = torch.zeros(len(up), len(down), dtype=torch.float64)
    seen = torch.zeros(len(up), len(down), dtype=torch.bool)
    for u, v, s in zip(scores["upstream"], scores["downstream"], scores["score"], strict=True):
        if u not in up or v not in down or not edge_mask[up[u], down[v]]:
            raise ValueError(f"{u} -> {v} is not an edge of the model's graph")
        matrix[up[u], down[v]] = float(s)
        seen[up[u], down[v]] = True
    missing = edge_mask & ~seen
    if missing.any():
        raise ValueError(f"{int(missing.sum())} of the graph's edges have no score")
    return matrix


def top_edge_masks(graph: Graph, scores: pd.DataFrame, counts: Sequence[int]) -> torch.Tensor:
    """``[len(counts), n_upstream, n_downstream]`` booleans: the top ``count`` edges by
    ``|score|`` (ties to the earlier edge in :meth:`Graph.edges` order) per count."""
    matrix = edge_score_matrix(graph, scores)
    edge_index = graph.edge_mask.T.nonzero()  # [n_edges, 2] (v, u), in Graph.edges order
    values = matrix[edge_index[:, 1], edge_index[:, 0]].numpy()
    order = top_k_by_magnitude(values, len(values))
    masks = torch.zeros(len(counts), *graph.edge_mask.shape, dtype=torch.bool)
    for k, count in enumerate(counts):
        chosen = edge_index[torch.as_tensor(order[:count], dtype=torch.long)]
        masks[k, chosen[:, 1], chosen[:, 0]] = True
    return masks


@torch.no_grad()
def circuit_prompt_metrics(
    loaded: LoadedModel,
    runs: PatchingRuns,
    metric: Metric,
    graph: Graph,
    in_circuit: torch.Tensor,
    ablation: Literal["source", "mean"] = "source",
    variants_per_pass: int | None = None,
    memory_budget: float = OUTPUTS_BUDGET_BYTES,
) -> torch.Tensor:
    """``[n_circuits, n_prompts]`` metric per prompt with every edge outside each circuit
    (``in_circuit``: ``[n_circuits, n_upstream, n_downstream]``) carrying its ablated
    value into its reader (Hanna et al. 2024's edge-level evaluation).

    Circuits run as variants on the batch axis, ``variants_per_pass`` at a time (at most
    4); by default as many as keep the pass's record of every upstream output
    (``[variants * prompts, pos, n_upstream, d_model]``) within ``memory_budget`` bytes.
    Identical circuits (every method's 100% circuit is the full graph; methods often
    agree on the large sizes) run once.
    """
    if ablation not in ("source", "mean"):
        raise ValueError(f"ablation must be 'source' or 'mean', not {ablation!r}")
    n = runs.n_prompts
    if variants_per_pass is None:
        element = torch.finfo(next(loaded.hf_model.parameters()).dtype).bits // 8
        per_variant = n * runs.base_tokens.shape[1] * len(graph.upstream) * graph.d_model * element
        variants_per_pass = max(1, min(4, int(memory_budget // per_variant)))
    prompts = torch.arange(n)
    shape = graph.edge_mask.shape
    circuits = (in_circuit & graph.edge_mask).flatten(1)
    distinct, inverse = torch.unique(circuits, dim=0, return_inverse=True)
    distinct = distinct.view(-1, *shape)
    out = []
    with graph_hooks_enabled(loaded.bridge):
        source = record_outputs(
            loaded, graph, runs.source_tokens, runs.read_positions, runs.attention_mask
        )
        replacement = source if ablation == "source" else source.mean(0, keepdim=True)
        for start in range(0, len(distinct), variants_per_pass):
            chunk = distinct[start : start + variants_per_pass] | ~graph.edge_mask
            k = len(chunk)
            hooks = circuit_ablation_hooks(graph, chunk, replacement, n)
            mask = None if runs.attention_mask is None else runs.attention_mask.repeat(k, 1)
            with loaded.bridge.hooks(fwd_hooks=hooks):
                logits = logits_at(
                    loaded, runs.base_tokens.repeat(k, 1), runs.read_positions.repeat(k), mask
                )
            out.append(metric(logits, prompts.repeat(k)).double().reshape(k, n).cpu())
    return torch.cat(out)[inverse]


def faithfulness_curve(
    loaded: LoadedModel,
    runs: PatchingRuns,
    metric: Metric,
    scores: pd.DataFrame,
    percentages: Sequence[float] = MIB_PERCENTAGES,
    ablation: Literal["source", "mean"] = "source",
    graph: Graph | None = None,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    level: Literal["edge", "node"] = "edge",
) -> tuple[pd.DataFrame, dict[str, float]]:
    """MIB's faithfulness curve of an edge scoring (see the module docstring), or of a
    node scoring (``level="node"``: sizes are shares of the upstream nodes, ``input``,
    heads or attention layers and MLPs, and each circuit is the edges between its top
    nodes, :func:`node_circuit_masks`).

    Args:
        loaded: The model (with a bridge).
        runs: Base prompts (the behaviour measured) and their counterfactuals (the
            ablated values, ``source``).
        metric: Per-prompt metric (e.g. a logit difference).
        scores: Every edge of ``graph`` with its score (``upstream, downstream, score``),
            or at node level every upstream node (``node, score``).
        percentages: Circuit sizes as shares of the edges, increasing.
        ablation: ``source`` (the counterfactual's value, MIB's "patching") or ``mean``.
        graph: The graph the scores are on (default: ``Graph.from_model(loaded)``).
        bootstrap_samples, confidence, seed: The CIs' bootstrap over prompts.

    Returns:
        ``(curve, areas)``: one row per size (``percentage``, ``n_edges``,
        ``faithfulness``, ``ci_low``, ``ci_high``, ``metric``) and ``{"cpr", "cpr_low",
        "cpr_high", "cmd", "cmd_low", "cmd_high", "metric_full", "metric_empty",
        "n_prompts", "n_edges"}``. ``f`` is NaN everywhere when ``m(N) = m(empty)``.
        At node level the curve also has ``n_nodes`` (its size) and ``areas`` too.
    """
    graph = Graph.from_model(loaded) if graph is None else graph
    _check_percentages(percentages)
    n_edges = int(graph.edge_mask.sum())
    if level == "edge":
        counts = [int(p * n_edges) for p in percentages]
        masks = top_edge_masks(graph, scores, [*counts, 0, n_edges])
    elif level == "node":
        counts = [int(p * len(graph.upstream)) for p in percentages]
        full = graph.edge_mask[None]
        masks = torch.cat([node_circuit_masks(graph, scores, counts), torch.zeros_like(full), full])
    else:
        raise ValueError(f"level must be 'edge' or 'node', not {level!r}")
    curve, areas = _curve(
        loaded, runs, metric, graph, masks, percentages, ablation,
        bootstrap_samples, confidence, seed,
    )  # fmt: skip
    curve.insert(1, "n_edges", masks[: len(counts)].sum(dim=(1, 2)).tolist())
    if level == "node":
        curve.insert(1, "n_nodes", counts)
        areas["n_nodes"] = len(graph.upstream)
    return curve, {**areas, "n_edges": n_edges}


def node_circuit_masks(graph: Graph, scores: pd.DataFrame, counts: Sequence[int]) -> torch.Tensor:
    """``[len(counts), n_upstream, n_downstream]`` edge circuits of the top ``count``
    upstream nodes by ``|score|`` (``scores``: ``node, score`` for every upstream node).

    A node circuit keeps the edges between its nodes (MIB's node-level evaluation): an
    edge ``u -> v`` is in when ``u`` is kept and so is the node that reads through
    ``v`` (a head for its query, key and value inputs; for a K/V group's input, any head
    of the group; the whole attention layer when outputs are per layer; an MLP for its
    input); edges into the logits need only ``u``.
    """
    by_name = dict(zip(scores["node"], scores["score"], strict=True))
    missing = [node.name for node in graph.upstream if node.name not in by_name]
    if missing:
        raise ValueError(f"{len(missing)} upstream nodes have no score (first: {missing[0]})")
    values = np.array([float(by_name[node.name]) for node in graph.upstream])
    order = top_k_by_magnitude(values, len(values))
    n_heads = sum(1 for node in graph.downstream if node.kind == "head" and node.layer == 0)
    n_kv = len({node.index for node in graph.downstream if node.kind == "kv" and node.layer == 0})
    up_index = {node.name: u for u, node in enumerate(graph.upstream)}
    # For each reader, the upstream nodes any one of which keeps it live.
    owners: list[list[int] | None] = []
    for node in graph.downstream:
        if node.kind == "logits":
            owners.append(None)
        elif node.kind == "mlp":
            owners.append([up_index[f"m{node.layer}"]])
        elif not graph.per_head_outputs:
            owners.append([up_index[f"a{node.layer}"]])
        elif node.kind == "kv":
            heads = [h for h in range(n_heads) if kv_group(h, n_heads, n_kv) == node.index]
            owners.append([up_index[f"a{node.layer}.h{h}"] for h in heads])
        else:
            owners.append([up_index[f"a{node.layer}.h{node.index}"]])
    masks = torch.zeros(len(counts), *graph.edge_mask.shape, dtype=torch.bool)
    for k, count in enumerate(counts):
        kept = torch.zeros(len(graph.upstream), dtype=torch.bool)
        kept[torch.as_tensor(order[:count], dtype=torch.long)] = True
        readers = torch.tensor([True if o is None else bool(kept[o].any()) for o in owners])
        masks[k] = kept[:, None] & readers[None, :] & graph.edge_mask
    return masks


def faithfulness_and_areas(
    sized: np.ndarray, empty: np.ndarray, full: np.ndarray, percentages: Sequence[float]
) -> np.ndarray:
    """``[f per size..., CPR, CMD]`` from per-prompt metrics: ``sized`` ``[n_sizes,
    n_prompts]``, ``empty`` and ``full`` ``[n_prompts]`` (NaN when ``m(N) = m(empty)``).
    Bootstraps call it on resampled prompt columns."""
    gap = full.mean() - empty.mean()
    f = (sized.mean(1) - empty.mean()) / gap if gap else np.full(len(sized), np.nan)
    return np.concatenate([f, curve_areas(percentages, f)])


def _check_percentages(percentages: Sequence[float]) -> None:
    if (
        list(percentages) != sorted(percentages)
        or not 0 <= min(percentages) <= max(percentages) <= 1
    ):
        raise ValueError("percentages must be increasing shares of the edges in [0, 1]")


def _curve(
    loaded: LoadedModel,
    runs: PatchingRuns,
    metric: Metric,
    graph: Graph,
    masks: torch.Tensor,
    percentages: Sequence[float],
    ablation: Literal["source", "mean"],
    bootstrap_samples: int,
    confidence: float,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Faithfulness of ``masks`` (one circuit per size, then the empty and the full
    circuit) with bootstrap CIs, and the curve's areas."""
    values = circuit_prompt_metrics(loaded, runs, metric, graph, masks, ablation).numpy()
    sized, empty, full = values[:-2], values[-2], values[-1]

    def statistic(rows: np.ndarray) -> np.ndarray:
        return faithfulness_and_areas(sized[:, rows], empty[rows], full[rows], percentages)

    n_sizes = len(percentages)
    point = statistic(np.arange(runs.n_prompts))
    samples = bootstrap(statistic, [runs.n_prompts], bootstrap_samples, seed)
    intervals = [percentile_interval(samples[:, i], confidence) for i in range(len(point))]
    curve = pd.DataFrame(
        {
            "percentage": list(percentages),
            "faithfulness": point[:n_sizes],
            "ci_low": [low for low, _ in intervals[:n_sizes]],
            "ci_high": [high for _, high in intervals[:n_sizes]],
            "metric": sized.mean(1),
        }
    )
    (cpr_low, cpr_high), (cmd_low, cmd_high) = intervals[-2], intervals[-1]
    areas = {
        "cpr": float(point[-2]), "cpr_low": cpr_low, "cpr_high": cpr_high,
        "cmd": float(point[-1]), "cmd_low": cmd_low, "cmd_high": cmd_high,
        "metric_full": float(full.mean()), "metric_empty": float(empty.mean()),
        "n_prompts": runs.n_prompts,
    }  # fmt: skip
    return curve, areas


def edge_auroc(scores: pd.DataFrame, true_edges: Iterable[tuple[str, str]]) -> float:
    """Area under the ROC curve of ``|score|`` as a detector of ``true_edges`` among the
    table's edges: the chance that a true edge outscores a false one (ties count half)."""
    truth = set(true_edges)
    labels = np.array(
        [(u, v) in truth for u, v in zip(scores["upstream"], scores["downstream"], strict=True)]
    )
    if labels.all() or not labels.any():
        raise ValueError("AUROC needs both circuit edges and other edges among the scores")
    magnitude = np.abs(scores["score"].to_numpy(dtype=np.float64))
    ranks = pd.Series(magnitude).rank(method="average").to_numpy()
    n_true, n_false = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_true * (n_true + 1) / 2) / (n_true * n_false))


# ------------------------------------------------------------------ a planted circuit

#: Attention and MLP output projections of a decoder layer, per architecture family
#: (Llama, Qwen2, Gemma: ``o_proj``/``down_proj``; GPT-2: ``c_proj``; GPT-NeoX: ``dense``).
_ATTENTION_OUTPUTS = ("self_attn.o_proj", "attn.c_proj", "attention.dense")
_MLP_OUTPUTS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h")


def _submodule(layer: torch.nn.Module, names: Sequence[str]) -> torch.nn.Module:
    for name in names:
        try:
            return layer.get_submodule(name)
        except AttributeError:
            continue
    raise ValueError(f"no output projection among {list(names)} in {type(layer).__name__}")


def _decoder_layers(hf_model) -> torch.nn.ModuleList:
    base = hf_model.base_model
    return base.layers if hasattr(base, "layers") else base.h


@torch.no_grad()
def plant_circuit(
    loaded: LoadedModel, heads: Iterable[tuple[int, int]], mlps: Iterable[int], graph: Graph
) -> list[tuple[str, str]]:
    """Make ``loaded`` a model whose only computation is a known circuit, in place.

    Every attention head not in ``heads`` and every MLP not in ``mlps`` gets its output
    projection zeroed (an MLP's output bias too; an attention output bias is shared by
    the heads and stays), so it writes nothing that depends on the input. Then an edge
    can change the metric only if it leaves a live writer (``input``, a kept head or
    MLP) and enters a live reader (a kept head's query, its K/V group's input, a kept
    MLP, the logits), and every other edge's exact patching effect is exactly zero.

    Returns:
        The planted circuit: the edges of ``graph`` between live writers and readers.
    """
    heads, mlps = {tuple(h) for h in heads}, set(mlps)
    n_heads = loaded.bridge.cfg.n_heads
    d_head = loaded.bridge.cfg.d_head
    for index, layer in enumerate(_decoder_layers(loaded.hf_model)):
        attention = _submodule(layer, _ATTENTION_OUTPUTS)
        transposed = type(attention).__name__ == "Conv1D"  # GPT-2: weight is [in, out]
        for head in range(n_heads):
            if (index, head) in heads:
                continue
            rows = slice(head * d_head, (head + 1) * d_head)
            if transposed:
                attention.weight[rows] = 0
            else:
                attention.weight[:, rows] = 0
        if index not in mlps:
            mlp = _submodule(layer, _MLP_OUTPUTS)
            mlp.weight.zero_()
            if getattr(mlp, "bias", None) is not None:
                mlp.bias.zero_()
    kv_groups: dict[int, set[int]] = {}
    n_kv = model_dims(loaded.bridge)["n_kv_heads"]
    for layer, head in heads:
        kv_groups.setdefault(layer, set()).add(kv_group(head, n_heads, n_kv))

    def live_writer(node) -> bool:
        if node.kind == "input":
            return True
        if node.kind == "head":
            return (node.layer, node.index) in heads
        if node.kind == "attn":
            return any(layer == node.layer for layer, _ in heads)
        return node.layer in mlps

    def live_reader(node) -> bool:
        if node.kind == "logits":
            return True
        if node.kind == "head":
            return (node.layer, node.index) in heads
        if node.kind == "kv":
            return node.index in kv_groups.get(node.layer, set())
        return node.layer in mlps

    writers = {node.name for node in graph.upstream if live_writer(node)}
    readers = {node.name for node in graph.downstream if live_reader(node)}
    return [(u, v) for u, v in graph.edges() if u in writers and v in readers]
