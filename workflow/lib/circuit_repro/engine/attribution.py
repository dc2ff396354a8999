"""Gradient-based attribution: AtP for components, EAP / EAP-IG for edges, and circuits.

Activation patching (:mod:`circuit_repro.engine.patching`) needs one forward pass per
component or edge. The methods here estimate all of them at once from gradients:

- :func:`attribution_patching` (AtP; Nanda 2023, "Attribution patching"; Syed, Rager
  and Conmy 2023; Kramár et al. 2024, "AtP*"): the effect of patching component ``c``
  from the *source* run into the *base* run is estimated to first order as
  ``sum_elements (a_c(source) - a_c(base)) * d metric / d a_c``, the gradient taken on
  the base run. One source forward pass, one base forward and one backward pass score
  every component, whatever their number. (AtP*'s QK fix and GradDrop are not
  implemented.)
- :func:`edge_attribution`: edge attribution patching (EAP; Syed, Rager and Conmy 2023,
  "Attribution Patching Outperforms Automated Circuit Discovery") and its
  integrated-gradients variant (EAP-IG; Hanna, Pezzelle and Belinkov 2024, "Have Faith
  in Faithfulness") on the computational :class:`Graph` of the model.
- :func:`exact_edge_patching`: the reference the edge scores approximate: patch one
  edge at a time and measure the metric.
- :func:`extract_circuit`, :class:`Circuit` and :func:`circuit_faithfulness`: keep the
  top-scoring nodes or edges, save them, and measure how much of the behaviour the
  circuit alone recovers.
- :func:`compare_with_exact`: rank correlation of AtP with exact patching on a sample.

The graph (:class:`Graph`)
--------------------------

The residual stream at any point is the sum of the outputs of everything before it:
the input embedding, each attention head (or attention layer) and each MLP. A node
*writes* (upstream) or *reads* (downstream) the stream:

- upstream (writers): ``input`` (the embedding that enters block 0, positional
  embeddings included), each head's output ``a{L}.h{H}`` (``hook_result``, the head's
  ``z @ W_O`` share of the attention output, bias included), each MLP's output ``m{L}``;
- downstream (readers): each head's input, each MLP's input ``m{L}`` (``hook_mlp_in``,
  the residual stream entering the pre-MLP norm) and ``logits`` (the final residual
  stream, before the final norm).

A downstream node reads *its own copy* of the residual stream (TransformerBridge's
``use_split_qkv_input`` forks the stream before the attention norm into one copy per
head for queries, keys and values; ``use_hook_mlp_in`` gives the MLP its own copy), so
``d metric / d in_v`` is the gradient through that node alone. An edge ``u -> v`` exists
when ``u`` is computed before ``v`` reads the stream: ``u``'s layer is earlier than
``v``'s, and additionally each attention node of layer ``L`` feeds the MLP of layer
``L`` in sequential blocks (Llama, GPT-2, Gemma, Qwen). In parallel-attention blocks
(GPT-NeoX, GPT-J: ``x + attn(ln1(x)) + mlp(ln2(x))``) attention and MLP of a layer both
read the block's input, so attention ``L`` does *not* feed MLP ``L``. For every
downstream node, its input equals the sum of the outputs of the upstream nodes with an
edge into it (:func:`graph_activations` returns both; the tests check the identity on
five architectures).

Head inputs. With ``split_qkv=False`` a head's input node ``a{L}.h{H}`` feeds its
query, key and value (one node, three copies that always receive the same patch). With
``split_qkv=True`` they are separate nodes ``a{L}.h{H}<q>``, ``<k>``, ``<v>``.

Grouped-query attention: keys and values belong to K/V heads, each shared by a group of
query heads, and the bridge computes them once per group. So under GQA the query input
is per query head (``a{L}.h{H}<q>``) and the key and value inputs are per K/V group:
``a{L}.g{G}<k>`` and ``a{L}.g{G}<v>`` when split, one node ``a{L}.g{G}<kv>`` feeding
both otherwise. Giving each query head its own K/V input would need K/V computed per
query head, which the bridge does not do; patching a group's K/V input changes every
query head of the group, as :func:`circuit_repro.engine.hooks.patch` does for ``k``/``v``.

Post-attention norms (Gemma 2/3 apply an RMSNorm to the summed attention output before
adding it to the stream): the heads' outputs do not add up to the layer's contribution,
so the upstream attention node is the whole layer, ``a{L}`` (``hook_attn_out``); head
inputs stay per head.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_repro.engine.hooks import Component, ablate, cache_activations, model_dims, patch
from circuit_repro.engine.patching import (
    DEFAULT_TOKEN_BUDGET,
    Metric,
    PatchingRuns,
    final_logits_at,
    patching_sweep,
)

# ----------------------------------------------------------------------- helpers


def _metric_name(metric: Metric) -> str:
    return getattr(metric, "name", type(metric).__name__)


def _prompt_chunks(n_prompts: int, batch_size: int | None) -> list[slice]:
    """Consecutive prompt ranges of at most ``batch_size`` prompts (all at once if None)."""
    size = n_prompts if batch_size is None else max(1, batch_size)
    return [slice(start, min(start + size, n_prompts)) for start in range(0, n_prompts, size)]


def _mask_rows(runs: PatchingRuns, rows: slice) -> torch.Tensor | None:
    return None if runs.attention_mask is None else runs.attention_mask[rows]


def _metric_rows(
    loaded, tokens: torch.Tensor, runs: PatchingRuns, rows: slice, metric: Metric
) -> torch.Tensor:
    """Per-prompt metric ``[len(rows)]`` of a forward pass on ``tokens`` (prompts ``rows``)."""
    logits = final_logits_at(loaded, tokens, runs.read_positions[rows], _mask_rows(runs, rows))
    return metric(logits, torch.arange(runs.n_prompts)[rows])


# ============================================================ attribution patching


def _probe_hook(name: str, probes: dict, values: dict):
    """Forward hook adding a zero "probe" that requires grad: d metric / d probe is the
    gradient with respect to the activation, whether or not the weights require grad."""

    def hook(activation, hook):
        probe = torch.zeros_like(activation, requires_grad=True)
        probes[name] = probe
        values[name] = activation.detach()
        return activation + probe

    return hook


def _reduce_to_selector(product: torch.Tensor, selector_length: int) -> np.ndarray:
    """Sum ``product`` (``[batch, ...]``) over the batch and over every axis a
    component selector does not address: ``[pos]`` for stream kinds, ``[pos, index]`` for
    heads/neurons, ``[head, query_pos]`` for patterns."""
    trailing = tuple(range(selector_length, product.dim()))
    if trailing:
        product = product.sum(dim=trailing)
    return product.sum(dim=0).double().cpu().numpy()


def attribution_patching(
    loaded,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """First-order estimate of patching each component from source into base (AtP).

    For component ``c`` with activation ``a_c`` (the elements its :class:`Component`
    selects: one head's ``z``, one position of the residual stream, one neuron ...)::

        score_c = sum over c's elements and prompts of
                  (a_c(source) - a_c(base)) * d metric_mean / d a_c |base

    where ``metric_mean`` is the metric averaged over prompts, so ``score_c``
    estimates how much patching ``c`` changes that average (Nanda 2023; Syed et al.
    2023; Kramár et al. 2024). Exact patching of ``c`` (:func:`patching_sweep`) is the
    quantity being approximated; the estimate is exact for a metric linear in ``a_c``.

    Cost: one forward pass on the source prompts (caching the activations), one
    forward and one backward pass on the base prompts, for any number of components
    and any mix of kinds (:data:`circuit_repro.engine.hooks.KINDS`).

    Args:
        loaded: A :class:`circuit_repro.models.LoadedModel` with a bridge.
        runs: Base/source tokens and read positions.
        components: Components to score (position None = summed over all positions).
        metric: Per-row metric, see :mod:`circuit_repro.engine.metrics`.
        batch_size: Prompts per forward pass (all at once if None); the scores do not
            depend on it.

    Returns:
        One row per component (input order) with the columns of
        :func:`patching_sweep`: ``kind, layer, index, position, value, metric,
        direction``, plus ``score`` (the estimated change of the metric), ``base_value``
        (the metric on the unpatched base run) and ``method = "atp"``. ``value =
        base_value + score`` estimates the patched metric, which is what
        :func:`patching_sweep`'s ``value`` measures.
    """
    if not components:
        raise ValueError("no components to score")
    bridge = loaded.bridge
    names = sorted({c.hook_name for c in components})
    selector_length = {c.hook_name: len(c.selector()) for c in components}
    tables: dict[str, np.ndarray] = {}
    base_total = 0.0
    for rows in _prompt_chunks(runs.n_prompts, batch_size):
        with torch.no_grad(), cache_activations(bridge, names) as source:
            final_logits_at(
                loaded, runs.source_tokens[rows], runs.read_positions[rows], _mask_rows(runs, rows)
            )
        probes: dict[str, torch.Tensor] = {}
        base: dict[str, torch.Tensor] = {}
        hooks = [(name, _probe_hook(name, probes, base)) for name in names]
        with torch.enable_grad(), bridge.hooks(fwd_hooks=hooks):
            per_prompt = _metric_rows(loaded, runs.base_tokens[rows], runs, rows, metric)
            objective = per_prompt.sum() / runs.n_prompts  # its share of metric_mean
            grads = torch.autograd.grad(objective, [probes[n] for n in names], allow_unused=True)
        base_total += per_prompt.detach().double().sum().item()
        for name, grad in zip(names, grads, strict=True):
            if grad is None:  # the activation does not reach the metric
                grad = torch.zeros_like(base[name])
            product = (source[name].to(grad.dtype) - base[name]) * grad  # [batch, ...]
            table = _reduce_to_selector(product, selector_length[name])
            tables[name] = tables[name] + table if name in tables else table

    scores = np.array([tables[c.hook_name][c.selector()[1:]].sum() for c in components])
    base_value = base_total / runs.n_prompts
    table = pd.DataFrame([c.label() for c in components])
    table["value"] = base_value + scores
    table["metric"] = _metric_name(metric)
    table["direction"] = runs.direction
    table["score"] = scores
    table["base_value"] = base_value
    table["method"] = "atp"
    return table


def compare_with_exact(
    loaded,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    sample: int = 32,
    seed: int = 0,
) -> dict[str, float | int]:
    """Check AtP against exact activation patching on a seeded random sample.

    Draws ``min(sample, len(components))`` components without replacement
    (``numpy.random.default_rng(seed)``), scores them with :func:`attribution_patching`
    and patches them exactly with :func:`patching_sweep`, and compares the AtP scores
    with the exact changes of the metric (patched - base).

    Returns:
        ``{"spearman", "pearson", "n", "mean_abs_error", "mean_abs_exact"}``;
        correlations are NaN when either side is constant.
    """
    from scipy import stats

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(components), size=min(sample, len(components)), replace=False)
    sampled = [components[i] for i in sorted(chosen)]
    atp = attribution_patching(loaded, runs, sampled, metric)
    exact = patching_sweep(loaded, runs, sampled, metric, progress=False)
    estimated = atp["score"].to_numpy()
    measured = exact["value"].to_numpy() - atp["base_value"].to_numpy()
    constant = np.ptp(estimated) == 0 or np.ptp(measured) == 0 or len(sampled) < 2
    return {
        "spearman": math.nan if constant else float(stats.spearmanr(estimated, measured)[0]),
        "pearson": math.nan if constant else float(stats.pearsonr(estimated, measured)[0]),
        "n": len(sampled),
        "mean_abs_error": float(np.abs(estimated - measured).mean()),
        "mean_abs_exact": float(np.abs(measured).mean()),
    }


# =================================================================== the graph


@dataclass(frozen=True)
class Node:
    """A node of the computational graph (see the module docstring).

    Attributes:
        name: ``input``, ``a{L}.h{H}``, ``a{L}``, ``m{L}``, ``logits``, or for head
            inputs ``a{L}.h{H}<q>`` ... ``a{L}.g{G}<kv>``.
        kind: ``input``, ``head`` (a head's output or input), ``attn`` (a whole
            attention layer's output), ``kv`` (a K/V group's input), ``mlp`` or ``logits``.
        layer: Block index; -1 for ``input``, ``n_layers`` for ``logits``.
        index: Head (``head``) or K/V group (``kv``); None otherwise.
        sites: ``(hook name, index along the head axis or None)`` where the node writes
            its output (upstream) or where its copies of the stream are read
            (downstream: one site per copy, e.g. the query, key and value inputs).
    """

    name: str
    kind: str
    layer: int
    index: int | None = None
    sites: tuple[tuple[str, int | None], ...] = ()


@dataclass
class Graph:
    """Nodes and edges of a model's computational graph (see the module docstring).

    Build with :meth:`from_model`. ``upstream`` is ordered by computation (``input``,
    then per layer its attention nodes and its MLP), so the upstream nodes feeding any
    downstream node are a prefix of ``upstream``: :meth:`n_feeding`.

    Attributes:
        upstream: Nodes that write to the residual stream.
        downstream: Nodes that read their own copy of it.
        n_layers: Number of blocks.
        parallel_attn_mlp: Attention and MLP of a block both read the block input.
        per_head_outputs: Upstream attention nodes are heads (else whole layers).
        split_qkv: Query, key and value inputs are separate downstream nodes.
        d_model: Width of the residual stream.
    """

    upstream: list[Node]
    downstream: list[Node]
    n_layers: int
    parallel_attn_mlp: bool
    per_head_outputs: bool
    split_qkv: bool
    d_model: int
    _feeding: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def from_model(cls, loaded, split_qkv: bool = False) -> Graph:
        """The graph of ``loaded`` (a LoadedModel or a TransformerBridge)."""
        bridge = getattr(loaded, "bridge", loaded)
        dims = model_dims(bridge)
        n_layers, n_heads, n_kv = dims["n_layers"], dims["n_heads"], dims["n_kv_heads"]
        hook_names = bridge.hook_dict
        parallel = bool(getattr(bridge.cfg, "parallel_attn_mlp", False)) or (
            "blocks.0.hook_resid_mid" not in hook_names
        )
        # A norm between the summed heads and the residual stream (Gemma's ln1_post)
        # breaks "layer output = sum of head outputs".
        per_head = "blocks.0.ln1_post.hook_in" not in hook_names
        grouped = n_kv != n_heads

        upstream = [Node("input", "input", -1, None, (("blocks.0.hook_resid_pre", None),))]
        downstream: list[Node] = []
        for layer in range(n_layers):
            attn = f"blocks.{layer}.attn"
            if per_head:
                upstream += [
                    Node(f"a{layer}.h{h}", "head", layer, h, ((f"{attn}.hook_result", h),))
                    for h in range(n_heads)
                ]
            else:
                upstream.append(
                    Node(
                        f"a{layer}", "attn", layer, None, ((f"blocks.{layer}.hook_attn_out", None),)
                    )
                )
            upstream.append(
                Node(f"m{layer}", "mlp", layer, None, ((f"blocks.{layer}.hook_mlp_out", None),))
            )

            q_in, k_in, v_in = (f"{attn}.hook_{x}_input" for x in "qkv")
            if not grouped and not split_qkv:
                downstream += [
                    Node(f"a{layer}.h{h}", "head", layer, h, ((q_in, h), (k_in, h), (v_in, h)))
                    for h in range(n_heads)
                ]
            else:
                downstream += [
                    Node(f"a{layer}.h{h}<q>", "head", layer, h, ((q_in, h),))
                    for h in range(n_heads)
                ]
                kv_kind, kv_letter = ("kv", "g") if grouped else ("head", "h")
                if split_qkv:
                    for letter, site in (("k", k_in), ("v", v_in)):
                        downstream += [
                            Node(
                                f"a{layer}.{kv_letter}{g}<{letter}>",
                                kv_kind,
                                layer,
                                g,
                                ((site, g),),
                            )
                            for g in range(n_kv)
                        ]
                else:
                    downstream += [
                        Node(f"a{layer}.g{g}<kv>", "kv", layer, g, ((k_in, g), (v_in, g)))
                        for g in range(n_kv)
                    ]
            downstream.append(
                Node(f"m{layer}", "mlp", layer, None, ((f"blocks.{layer}.hook_mlp_in", None),))
            )
        final = f"blocks.{n_layers - 1}.hook_resid_post"
        downstream.append(Node("logits", "logits", n_layers, None, ((final, None),)))
        graph = cls(upstream, downstream, n_layers, parallel, per_head, split_qkv, dims["d_model"])
        graph._feeding = [graph._count_feeding(v) for v in downstream]
        return graph

    @staticmethod
    def feeds(upstream: Node, downstream: Node, parallel_attn_mlp: bool) -> bool:
        """Whether ``upstream``'s output is part of ``downstream``'s input."""
        if upstream.layer < downstream.layer:
            return True
        same_block_mlp = (
            upstream.layer == downstream.layer
            and upstream.kind in ("head", "attn")
            and downstream.kind == "mlp"
        )
        return same_block_mlp and not parallel_attn_mlp

    def _count_feeding(self, downstream: Node) -> int:
        mask = [self.feeds(u, downstream, self.parallel_attn_mlp) for u in self.upstream]
        count = sum(mask)
        if mask != [True] * count + [False] * (len(mask) - count):
            raise AssertionError(f"upstream nodes feeding {downstream.name} are not a prefix")
        return count

    def n_feeding(self, downstream_index: int) -> int:
        """How many upstream nodes (a prefix of ``upstream``) feed downstream node ``i``."""
        return self._feeding[downstream_index]

    @property
    def edge_mask(self) -> torch.Tensor:
        """Boolean ``[n_upstream, n_downstream]``: True where an edge exists."""
        mask = torch.zeros(len(self.upstream), len(self.downstream), dtype=torch.bool)
        for v, count in enumerate(self._feeding):
            mask[:count, v] = True
        return mask

    def edges(self) -> list[tuple[str, str]]:
        """Every edge ``(upstream name, downstream name)``, grouped by downstream node."""
        return [
            (self.upstream[u].name, node.name)
            for v, node in enumerate(self.downstream)
            for u in range(self._feeding[v])
        ]

    def output_sites(self) -> dict[str, list[tuple[int, int | None]]]:
        """Hook name -> ``(upstream index, head index or None)`` written there."""
        sites: dict[str, list[tuple[int, int | None]]] = {}
        for u, node in enumerate(self.upstream):
            for name, index in node.sites:
                sites.setdefault(name, []).append((u, index))
        return sites

    def input_sites(self) -> dict[str, list[tuple[int, int | None]]]:
        """Hook name -> ``(downstream index, head index or None)`` read there."""
        sites: dict[str, list[tuple[int, int | None]]] = {}
        for v, node in enumerate(self.downstream):
            for name, index in node.sites:
                sites.setdefault(name, []).append((v, index))
        return sites


_GRAPH_FLAGS = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")


@contextlib.contextmanager
def graph_hooks_enabled(bridge) -> Iterator[None]:
    """Turn on the bridge hooks the graph needs, restoring the previous settings after.

    ``use_split_qkv_input`` (per-head copies of the stream for Q, K and V:
    ``hook_{q,k,v}_input``, ``[batch, pos, heads, d_model]``), ``use_attn_result``
    (per-head outputs ``hook_result``, ``[batch, pos, heads, d_model]``) and
    ``use_hook_mlp_in``. The logits do not change (beyond float rounding).
    """
    cfg = bridge.cfg
    saved = {flag: bool(getattr(cfg, flag, False)) for flag in (*_GRAPH_FLAGS, "use_attn_in")}
    try:
        if saved["use_attn_in"]:
            bridge.set_use_attn_in(False)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_attn_result(True)
        bridge.set_use_hook_mlp_in(True)
        yield
    finally:
        bridge.set_use_split_qkv_input(saved["use_split_qkv_input"])
        bridge.set_use_attn_result(saved["use_attn_result"])
        bridge.set_use_hook_mlp_in(saved["use_hook_mlp_in"])
        if saved["use_attn_in"]:
            bridge.set_use_attn_in(True)


def _recording_hooks(graph: Graph, store: dict[str, torch.Tensor]) -> list:
    """Hooks writing every upstream node's output into ``store["out"]``:
    ``[batch, pos, n_upstream, d_model]``, allocated on first use, detached."""
    hooks = []
    n_upstream = len(graph.upstream)
    for name, entries in graph.output_sites().items():
        us = [u for u, _ in entries]
        heads = [h for _, h in entries]

        def hook(activation, hook, us=us, heads=heads):
            if "out" not in store:
                batch, pos = activation.shape[:2]
                store["out"] = activation.new_zeros(batch, pos, n_upstream, activation.shape[-1])
            value = activation.detach()
            store["out"][:, :, us] = (
                value[:, :, heads] if heads[0] is not None else value[:, :, None]
            )

        hooks.append((name, hook))
    return hooks


@torch.no_grad()
def graph_activations(
    loaded,
    graph: Graph,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every node's output and input on ``tokens``.

    Returns:
        ``(outputs, inputs)``: ``[batch, pos, n_upstream, d_model]`` outputs of the
        upstream nodes and ``[batch, pos, n_downstream, d_model]`` inputs of the
        downstream nodes (a node's first site; its copies are equal). For every
        downstream node ``v``, ``inputs[..., v, :] == outputs[..., :n_feeding(v), :].sum(-2)``.
    """
    read = torch.zeros(tokens.shape[0], dtype=torch.long)  # logits are not needed
    store: dict[str, torch.Tensor] = {}
    first_sites = {}
    for v, node in enumerate(graph.downstream):
        first_sites.setdefault(node.sites[0][0], []).append((v, node.sites[0][1]))
    inputs: dict[int, torch.Tensor] = {}

    def reader(entries):
        def hook(activation, hook):
            for v, index in entries:
                inputs[v] = activation[:, :, index] if index is not None else activation

        return hook

    hooks = _recording_hooks(graph, store) + [
        (name, reader(entries)) for name, entries in first_sites.items()
    ]
    with graph_hooks_enabled(loaded.bridge), loaded.bridge.hooks(fwd_hooks=hooks):
        final_logits_at(loaded, tokens, read, attention_mask)
    return store["out"], torch.stack([inputs[v] for v in range(len(graph.downstream))], dim=2)


def _record_outputs(loaded, graph: Graph, tokens, read, mask) -> torch.Tensor:
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad(), loaded.bridge.hooks(fwd_hooks=_recording_hooks(graph, store)):
        final_logits_at(loaded, tokens, read, mask)
    return store["out"]


# ==================================================================== EAP, EAP-IG


def integration_points(steps: int, rule: str = "midpoint") -> list[float]:
    """Where EAP-IG evaluates the gradient: fractions ``alpha`` of the way from the base
    input (0) to the source input (1).

    ``midpoint``: ``(k + 1/2) / steps`` (error of the Riemann sum falls as 1/steps²);
    ``left``: ``k / steps``, starting at the base input, so ``steps=1`` is plain EAP;
    ``right``: ``(k + 1) / steps``, ending at the source input, as the released EAP-IG
    code does (``corrupted + k/steps * (clean - corrupted)``, ``k = 0..steps-1``, with
    the clean run as base). ``k = 0 .. steps - 1``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    offsets = {"midpoint": 0.5, "left": 0.0, "right": 1.0}
    if rule not in offsets:
        raise ValueError(f"unknown integration rule {rule!r}; choose {sorted(offsets)}")
    return [(k + offsets[rule]) / steps for k in range(steps)]


def _edge_table(graph: Graph, scores: torch.Tensor, method: str, metric, runs) -> pd.DataFrame:
    upstream, downstream, values = [], [], []
    for v, node in enumerate(graph.downstream):
        for u in range(graph.n_feeding(v)):
            upstream.append(graph.upstream[u].name)
            downstream.append(node.name)
            values.append(float(scores[u, v]))
    return pd.DataFrame(
        {
            "upstream": upstream,
            "downstream": downstream,
            "score": values,
            "method": method,
            "metric": _metric_name(metric),
            "direction": runs.direction,
        }
    )


def edge_attribution(
    loaded,
    runs: PatchingRuns,
    metric: Metric,
    method: Literal["eap", "eap-ig"] = "eap",
    steps: int = 5,
    split_qkv: bool = False,
    graph: Graph | None = None,
    ig_rule: Literal["midpoint", "left", "right"] = "midpoint",
    batch_size: int | None = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Score every edge of the graph with EAP or EAP-IG.

    EAP (Syed, Rager and Conmy 2023): for edge ``u -> v``::

        score(u -> v) = sum over prompts, positions and d_model of
                        (out_u(source) - out_u(base)) * d metric_mean / d in_v |base

    the first-order estimate of patching only that edge (:func:`exact_edge_patching`).
    EAP-IG (Hanna, Pezzelle and Belinkov 2024) replaces the gradient by its average
    over ``steps`` runs whose input embeddings are interpolated between the base and
    the source prompts, ``e(alpha) = e_base + alpha (e_source - e_base)`` (points from
    :func:`integration_points`). By the completeness of integrated gradients, the
    scores of the edges leaving ``input`` then add up to ``metric(source) -
    metric(base)`` as ``steps`` grows.

    Cost: a forward pass on the source prompts, then one forward and backward pass
    (EAP) or a base forward plus ``steps`` forward and backward passes (EAP-IG).

    Args:
        loaded: A LoadedModel with a bridge.
        runs: Base/source tokens and read positions.
        metric: Per-row metric.
        method: ``eap`` or ``eap-ig``.
        steps: Integration steps of EAP-IG (ignored by EAP).
        split_qkv: Separate query/key/value input nodes (see :class:`Graph`).
        graph: A prebuilt graph (``split_qkv`` is then ignored).
        ig_rule: Where the gradients are taken, see :func:`integration_points`.
        batch_size: Prompts per forward pass (all at once if None). Memory grows as
            three ``[batch_size, pos, n_upstream, d_model]`` tensors (source and base
            outputs, their difference): about 0.7 GB for SmolLM2-135M at 16 prompts of
            20 tokens in float32. The scores do not depend on it.
        progress: Show a progress bar over integration steps.

    Returns:
        One row per edge: ``upstream, downstream, score, method, metric, direction``.
    """
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"method must be 'eap' or 'eap-ig', not {method!r}")
    graph = Graph.from_model(loaded, split_qkv=split_qkv) if graph is None else graph
    alphas = [0.0] if method == "eap" else sorted(integration_points(steps, ig_rule))
    bridge = loaded.bridge
    input_sites = graph.input_sites()
    input_hook_names = sorted(input_sites)
    scores = torch.zeros(len(graph.upstream), len(graph.downstream), dtype=torch.float64)

    with graph_hooks_enabled(bridge):
        for rows in _prompt_chunks(runs.n_prompts, batch_size):
            read, mask = runs.read_positions[rows], _mask_rows(runs, rows)
            source_out = _record_outputs(loaded, graph, runs.source_tokens[rows], read, mask)
            base_store: dict[str, torch.Tensor] = {}
            if alphas[0] != 0.0:
                base_store["out"] = _record_outputs(
                    loaded, graph, runs.base_tokens[rows], read, mask
                )
            # Accumulated over integration points: sum_alpha d objective / d in_v, per site.
            grad_sums: dict[str, torch.Tensor] = {}
            for alpha in tqdm(alphas, desc=method, disable=not progress, unit="step"):
                probes: dict[str, torch.Tensor] = {}
                hooks = [(name, _probe_hook(name, probes, {})) for name in input_hook_names]
                if alpha == 0.0:
                    hooks += _recording_hooks(graph, base_store)
                else:
                    embed_base = base_store["out"][:, :, 0]  # [batch, pos, d_model]
                    embed_source = source_out[:, :, 0]
                    interpolated = embed_base + alpha * (embed_source - embed_base)
                    hooks.append(("blocks.0.hook_resid_pre", lambda act, hook, x=interpolated: x))
                with torch.enable_grad(), bridge.hooks(fwd_hooks=hooks):
                    per_prompt = _metric_rows(loaded, runs.base_tokens[rows], runs, rows, metric)
                    objective = per_prompt.sum() / runs.n_prompts
                    grads = torch.autograd.grad(
                        objective, [probes[n] for n in input_hook_names], allow_unused=True
                    )
                for name, grad in zip(input_hook_names, grads, strict=True):
                    if grad is None:
                        continue
                    grad_sums[name] = grad_sums[name] + grad if name in grad_sums else grad
            # [n_upstream, batch * pos * d_model]: a node's feeding set is a row prefix.
            delta = (source_out - base_store["out"]).permute(2, 0, 1, 3).flatten(1)
            for name, grad in grad_sums.items():
                columns = [v for v, _ in input_sites[name]]  # distinct within a hook
                heads = [h for _, h in input_sites[name]]
                count = graph.n_feeding(columns[0])  # the same for every node of a hook
                # grad: [batch, pos, heads, d_model] at head inputs, else [batch, pos, d_model]
                grad = grad[:, :, heads] if heads[0] is not None else grad[:, :, None]
                grad = grad.permute(2, 0, 1, 3).flatten(1)  # [heads, batch * pos * d_model]
                contribution = delta[:count] @ grad.T  # [count, heads]
                scores[:count, columns] += contribution.double() / len(alphas)
    return _edge_table(graph, scores, method, metric, runs)


# ========================================================= exact edge interventions


def _edge_intervention_hooks(
    graph: Graph,
    coefficients: torch.Tensor,
    replacement: torch.Tensor,
    n_prompts: int,
) -> list:
    """Hooks that change each downstream node's input edge by edge.

    For variant ``k`` (rows ``k * n_prompts ...``) and downstream node ``v``::

        in_v <- in_v + sum_u coefficients[k, u, v] * (replacement_u - current_u)

    where ``current_u`` is ``u``'s output in this very forward pass (recorded live)
    and ``replacement_u`` is ``replacement[..., u, :]`` (``[n_prompts or 1, pos,
    n_upstream, d_model]``). With a one-hot coefficient this patches one edge; with
    ``1 - in_circuit`` it ablates every edge outside a circuit (Hanna et al. 2024).
    """
    store: dict[str, torch.Tensor] = {}
    hooks = _recording_hooks(graph, store)
    n_variants = coefficients.shape[0]
    for name, entries in graph.input_sites().items():
        columns = [v for v, _ in entries]
        heads = [h for _, h in entries]
        count = graph.n_feeding(columns[0])
        assert all(graph.n_feeding(v) == count for v in columns)
        weights = coefficients[:, :count, columns]  # [variants, count, nodes]
        if not weights.any():
            continue

        def hook(activation, hook, weights=weights, heads=heads, count=count):
            current = store["out"][:, :, :count]  # [variants * prompts, pos, count, d]
            rows, pos = current.shape[:2]
            current = current.reshape(n_variants, rows // n_variants, pos, count, -1)
            diff = replacement[None, :, :pos, :count].to(current.dtype) - current
            change = torch.einsum("kbpud,kun->kbpnd", diff, weights.to(diff.dtype))
            change = change.reshape(rows, pos, len(heads), -1)
            activation = activation.clone()
            if heads[0] is None:
                activation += change[:, :, 0]
            else:
                activation[:, :, heads] += change
            return activation

        hooks.append((name, hook))
    return hooks


def exact_edge_patching(
    loaded,
    runs: PatchingRuns,
    metric: Metric,
    graph: Graph | None = None,
    edges: Sequence[tuple[str, str]] | None = None,
    scale: float = 1.0,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = False,
) -> pd.DataFrame:
    """Patch one edge at a time exactly: what EAP and EAP-IG estimate.

    For edge ``u -> v`` the base prompts run unchanged except that ``v``'s own copy of
    the residual stream becomes ``in_v(base) + scale * (out_u(source) - out_u(base))``:
    only that edge carries the source value, every other node (including ``u``'s other
    readers) sees the base run. ``scale`` < 1 patches a fraction of the difference
    (``(patched - base) / scale`` tends to the EAP score as ``scale -> 0``).

    Edges are batched as variants on the batch axis (``token_budget`` tokens per pass).

    Returns:
        One row per edge: ``upstream, downstream, score`` (mean metric change, patched
        minus base), ``method = "exact"``, ``metric``, ``direction``.
    """
    graph = Graph.from_model(loaded) if graph is None else graph
    edges = graph.edges() if edges is None else list(edges)
    up_index = {node.name: i for i, node in enumerate(graph.upstream)}
    down_index = {node.name: i for i, node in enumerate(graph.downstream)}
    mask = graph.edge_mask
    pairs = [(up_index[u], down_index[v]) for u, v in edges]
    for (u, v), edge in zip(pairs, edges, strict=True):
        if not mask[u, v]:
            raise ValueError(f"{edge[0]} -> {edge[1]} is not an edge of the graph")
    n_prompts, seq = runs.base_tokens.shape
    prompt_index = torch.arange(n_prompts)
    all_rows = slice(None)
    values = torch.empty(len(pairs), dtype=torch.float64)
    with graph_hooks_enabled(loaded.bridge):
        args = (runs.read_positions, runs.attention_mask)
        source_out = _record_outputs(loaded, graph, runs.source_tokens, *args)
        base_out = _record_outputs(loaded, graph, runs.base_tokens, *args)
        with torch.no_grad():
            base_value = _metric_rows(loaded, runs.base_tokens, runs, all_rows, metric).double()
        replacement = base_out + scale * (source_out - base_out)
        per_pass = max(1, token_budget // (n_prompts * seq))
        chunks = [
            list(range(i, min(i + per_pass, len(pairs)))) for i in range(0, len(pairs), per_pass)
        ]
        for chunk in tqdm(chunks, desc="edge patching", disable=not progress, unit="pass"):
            coefficients = torch.zeros(len(chunk), len(graph.upstream), len(graph.downstream))
            for k, i in enumerate(chunk):
                coefficients[(k, *pairs[i])] = 1.0
            hooks = _edge_intervention_hooks(graph, coefficients, replacement, n_prompts)
            n_variants = len(chunk)
            with torch.no_grad(), loaded.bridge.hooks(fwd_hooks=hooks):
                logits = final_logits_at(
                    loaded,
                    runs.base_tokens.repeat(n_variants, 1),
                    runs.read_positions.repeat(n_variants),
                    None
                    if runs.attention_mask is None
                    else runs.attention_mask.repeat(n_variants, 1),
                )
            per_row = metric(logits, prompt_index.repeat(n_variants)).double()
            change = (per_row.view(n_variants, n_prompts) - base_value).mean(dim=1)
            values[chunk] = change
    table = pd.DataFrame(
        {
            "upstream": [u for u, _ in edges],
            "downstream": [v for _, v in edges],
            "score": values.numpy(),
        }
    )
    table["method"] = "exact"
    table["metric"] = _metric_name(metric)
    table["direction"] = runs.direction
    return table


# ==================================================================== circuits


@dataclass
class Circuit:
    """A subgraph kept for faithfulness evaluation.

    Attributes:
        level: ``edge`` (``edges`` lists the kept edges; ``nodes`` their endpoints) or
            ``node`` (``nodes`` lists kept heads/attention layers/MLPs, ``edges`` empty).
        nodes: Node names (see :class:`Graph`).
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


def _select(names: list[str], values: np.ndarray, top_k, threshold) -> list[int]:
    """Indices of the kept items: |score| >= threshold, then the top_k by |score|."""
    if top_k is None and threshold is None:
        raise ValueError("give top_k, threshold or both")
    magnitude = np.abs(values)
    order = np.argsort(-magnitude, kind="stable")
    if threshold is not None:
        order = order[magnitude[order] >= threshold]
    if top_k is not None:
        order = order[:top_k]
    return sorted(order.tolist())


def extract_circuit(
    scores: pd.DataFrame | Mapping[str, float],
    top_k: int | None = None,
    threshold: float | None = None,
) -> Circuit:
    """Keep the highest-scoring edges or nodes.

    Args:
        scores: An edge table (:func:`edge_attribution` / :func:`exact_edge_patching`:
            ``upstream, downstream, score``) gives an edge circuit. A component table
            (:func:`attribution_patching`, or :func:`patching_sweep` with
            ``base_value`` added by :func:`~circuit_repro.engine.patching.add_normalized_effect`,
            over ``head``, ``attn_out`` and ``mlp_out`` components at all positions;
            scored by ``score``, else ``value - base_value``) or a mapping ``{node
            name: score}`` gives a node circuit.
        top_k: Keep at most this many items, largest ``|score|`` first.
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
        keep = _select([f"{u}->{v}" for u, v in edges], values, top_k, threshold)
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
    keep = _select(names, values, top_k, threshold)
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
    loaded, runs: PatchingRuns, metric, ablated: list[Component], source, ablation: str
) -> float:
    bridge = loaded.bridge
    if ablation == "source":
        context = patch(bridge, ablated, source)
    else:
        context = ablate(bridge, ablated, "mean", reference=source)
    with context:
        values = _metric_rows(loaded, runs.base_tokens, runs, slice(None), metric)
    return values.double().mean().item()


@torch.no_grad()
def _edge_ablated_metric(
    loaded, runs: PatchingRuns, metric, graph: Graph, ablated: torch.Tensor, replacement
) -> float:
    hooks = _edge_intervention_hooks(graph, ablated[None].float(), replacement, runs.n_prompts)
    with loaded.bridge.hooks(fwd_hooks=hooks):
        values = _metric_rows(loaded, runs.base_tokens, runs, slice(None), metric)
    return values.double().mean().item()


def circuit_faithfulness(
    loaded,
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
        full = _metric_rows(loaded, runs.base_tokens, runs, slice(None), metric)
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
            final_logits_at(loaded, runs.source_tokens, runs.read_positions, runs.attention_mask)
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
            source_out = _record_outputs(
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

    gap = metric_full - metric_ablated
    return {
        "faithfulness": (metric_circuit - metric_ablated) / gap if gap != 0 else math.nan,
        "metric_circuit": metric_circuit,
        "metric_full": metric_full,
        "metric_ablated": metric_ablated,
        "level": level,
        "ablation": ablation,
        "n_kept": n_kept,
        "n_total": n_total,
    }
