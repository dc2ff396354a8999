# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""The computational graph of a model, and edge attribution (EAP, EAP-IG) on it.

Activation patching (:mod:`circuit_repro.engine.patching`) patches one component at a
time; the methods here score every *edge* between components:

- :func:`edge_attribution`: edge attribution patching (EAP; Syed, Rager and Conmy 2023,
  "Attribution Patching Outperforms Automated Circuit Discovery") and its
  integrated-gradients variant (EAP-IG; Hanna, Pezzelle and Belinkov 2024, "Have Faith
  in Faithfulness") on the computational :class:`Graph` of the model: a first-order
  estimate of patching each edge, from a few forward and backward passes.
- :func:`exact_edge_patching`: the reference the edge scores approximate: patch one
  edge at a time and measure the metric.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from circuit_repro.engine.attribution import probe_hook, prompt_chunks
from circuit_repro.engine.forward import logits_at, start_at_layer
from circuit_repro.engine.hooks import cache_activations, model_dims
from circuit_repro.engine.metrics import Metric, metric_name
from circuit_repro.engine.patching import DEFAULT_TOKEN_BUDGET, PatchingRuns, prompt_metric

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from circuit_repro.models.load import LoadedModel

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
    def from_model(cls, loaded: LoadedModel | TransformerBridge, split_qkv: bool = False) -> Graph:
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
    loaded: LoadedModel,
    graph: Graph,
    tokens: Int[torch.Tensor, "prompt pos"],
    attention_mask: Int[torch.Tensor, "prompt pos"] | None = None,
) -> tuple[
    Float[torch.Tensor, "prompt pos upstream d_model"],
    Float[torch.Tensor, "prompt pos downstream d_model"],
]:
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
        logits_at(loaded, tokens, read, attention_mask)
    return store["out"], torch.stack([inputs[v] for v in range(len(graph.downstream))], dim=2)


def record_outputs(
    loaded: LoadedModel,
    graph: Graph,
    tokens: Int[torch.Tensor, "prompt pos"],
    read: Int[torch.Tensor, " prompt"],
    mask: Int[torch.Tensor, "prompt pos"] | None,
) -> Float[torch.Tensor, "prompt pos upstream d_model"]:
    """Every upstream node's output on ``tokens`` (see :func:`graph_activations`)."""
    store: dict[str, torch.Tensor] = {}
    with torch.no_grad(), loaded.bridge.hooks(fwd_hooks=_recording_hooks(graph, store)):
        logits_at(loaded, tokens, read, mask)
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
            "metric": metric_name(metric),
            "direction": runs.direction,
        }
    )


def edge_attribution(
    loaded: LoadedModel,
    runs: PatchingRuns,
    metric: Metric,
    method: Literal["eap", "eap-ig"] = "eap",
    steps: int = 5,
    split_qkv: bool = False,
    graph: Graph | None = None,
    ig_rule: Literal["midpoint", "left", "right"] = "midpoint",
    batch_size: int | None = 16,
    progress: bool = False,
    per_prompt: bool = False,
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
        per_prompt: Also return each prompt's share of every score (the scores are
            sums over prompts), for bootstraps over prompts.

    Returns:
        One row per edge: ``upstream, downstream, score, method, metric, direction``;
        with ``per_prompt``, also ``[n_prompts, n_edges]`` float64 shares in the
        table's row order.
    """
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"method must be 'eap' or 'eap-ig', not {method!r}")
    graph = Graph.from_model(loaded, split_qkv=split_qkv) if graph is None else graph
    alphas = [0.0] if method == "eap" else sorted(integration_points(steps, ig_rule))
    bridge = loaded.bridge
    input_sites = graph.input_sites()
    input_hook_names = sorted(input_sites)
    # Each prompt's share of every score: [prompt, upstream, downstream].
    scores = torch.zeros(
        runs.n_prompts, len(graph.upstream), len(graph.downstream), dtype=torch.float64
    )

    with graph_hooks_enabled(bridge):
        for rows in prompt_chunks(runs.n_prompts, batch_size):
            read, mask = runs.read_positions[rows], runs.mask_rows(rows)
            source_out = record_outputs(loaded, graph, runs.source_tokens[rows], read, mask)
            base_store: dict[str, torch.Tensor] = {}
            if alphas[0] != 0.0:
                base_store["out"] = record_outputs(
                    loaded, graph, runs.base_tokens[rows], read, mask
                )
            # Accumulated over integration points: sum_alpha d objective / d in_v, per site.
            grad_sums: dict[str, torch.Tensor] = {}
            for alpha in tqdm(alphas, desc=method, disable=not progress, unit="step"):
                probes: dict[str, torch.Tensor] = {}
                hooks = [(name, probe_hook(name, probes, {})) for name in input_hook_names]
                if alpha == 0.0:
                    hooks += _recording_hooks(graph, base_store)
                else:
                    embed_base = base_store["out"][:, :, 0]  # [batch, pos, d_model]
                    embed_source = source_out[:, :, 0]
                    interpolated = embed_base + alpha * (embed_source - embed_base)
                    hooks.append(("blocks.0.hook_resid_pre", lambda act, hook, x=interpolated: x))
                with torch.enable_grad(), bridge.hooks(fwd_hooks=hooks):
                    prompt_values = prompt_metric(
                        loaded, runs.base_tokens[rows], runs, metric, rows
                    )
                    objective = prompt_values.sum() / runs.n_prompts
                    grads = torch.autograd.grad(
                        objective, [probes[n] for n in input_hook_names], allow_unused=True
                    )
                for name, grad in zip(input_hook_names, grads, strict=True):
                    if grad is None:
                        continue
                    grad_sums[name] = grad_sums[name] + grad if name in grad_sums else grad
            # [n_upstream, batch, pos * d_model]: a node's feeding set is a row prefix.
            delta = (source_out - base_store["out"]).permute(2, 0, 1, 3).flatten(2)
            for name, grad in grad_sums.items():
                columns = [v for v, _ in input_sites[name]]  # distinct within a hook
                heads = [h for _, h in input_sites[name]]
                count = graph.n_feeding(columns[0])  # the same for every node of a hook
                # grad: [batch, pos, heads, d_model] at head inputs, else [batch, pos, d_model]
                grad = grad[:, :, heads] if heads[0] is not None else grad[:, :, None]
                grad = grad.permute(2, 0, 1, 3).flatten(2)  # [heads, batch, pos * d_model]
                contribution = torch.einsum("ubk,hbk->buh", delta[:count], grad)
                scores[rows, :count, columns] += contribution.double() / len(alphas)
    table = _edge_table(graph, scores.sum(0), method, metric, runs)
    if not per_prompt:
        return table
    feeding = [(u, v) for v in range(len(graph.downstream)) for u in range(graph.n_feeding(v))]
    up, down = torch.tensor(feeding).T
    return table, scores[:, up, down].numpy()


# ========================================================= exact edge interventions


def edge_intervention_hooks(
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


def circuit_ablation_hooks(
    graph: Graph,
    in_circuit: torch.Tensor,
    replacement: torch.Tensor,
    n_prompts: int,
) -> list:
    """Hooks that ablate every edge outside each circuit of ``in_circuit``.

    Variant ``k`` (rows ``k * n_prompts ...``) runs circuit ``in_circuit[k]``
    (``[n_upstream, n_downstream]`` booleans): each downstream node ``v`` reads::

        in_v = sum over u in the circuit of current_u + sum over u outside it of replacement_u

    the same intervention as :func:`edge_intervention_hooks` with coefficients ``1 -
    in_circuit``, computed on the smaller side. A node's input is the sum of its
    feeding nodes' outputs (:func:`graph_activations`), so when a node keeps fewer
    edges than it loses its input is rebuilt from the replacement's input plus the
    kept edges' differences, and otherwise the removed edges' differences are added
    to the live input. Only the edges on that side are gathered, so a small circuit or
    a nearly full one costs about a plain forward pass, where the dense form reads
    every upstream output for every reader.

    Args:
        graph: The graph the circuits are on.
        in_circuit: ``[n_variants, n_upstream, n_downstream]`` booleans.
        replacement: ``[n_prompts or 1, pos, n_upstream, d_model]`` ablated values.
        n_prompts: Prompts per variant.
    """
    store: dict[str, torch.Tensor] = {}
    hooks = _recording_hooks(graph, store)
    n_variants = in_circuit.shape[0]
    for name, entries in graph.input_sites().items():
        columns = [v for v, _ in entries]
        heads = [h for _, h in entries]
        count = graph.n_feeding(columns[0])
        kept = in_circuit[:, :count, columns]  # [variants, count, nodes]
        plans: list[tuple[bool, torch.Tensor, torch.Tensor] | None] = []
        for k in range(n_variants):
            if bool(kept[k].all()):
                plans.append(None)  # nothing removed: the live input stays
                continue
            rebuild = int(kept[k].sum()) <= kept[k].numel() // 2
            side = kept[k] if rebuild else ~kept[k]  # [count, nodes]
            us = side.any(dim=1).nonzero().squeeze(1)
            plans.append((rebuild, us, side[us]))
        if all(plan is None for plan in plans):
            continue
        replaced_input = replacement[:, :, :count].sum(dim=2)  # [n or 1, pos, d_model]

        def hook(activation, hook, plans=plans, heads=heads, replaced_input=replaced_input):
            current = store["out"]  # [variants * prompts, pos, n_upstream, d_model]
            pos = activation.shape[1]
            activation = activation.clone()
            for k, plan in enumerate(plans):
                if plan is None:
                    continue
                rebuild, us, side = plan
                rows = slice(k * n_prompts, (k + 1) * n_prompts)
                live = current[rows, :pos].index_select(2, us)
                ablated = replacement[:, :pos].index_select(2, us).to(live.dtype)
                diff = live - ablated if rebuild else ablated - live  # [n, pos, m, d_model]
                change = torch.einsum("bpud,un->bpnd", diff, side.to(diff.dtype))
                if rebuild:
                    value = replaced_input[:, :pos, None].to(change.dtype) + change
                    if heads[0] is None:
                        activation[rows] = value[:, :, 0]
                    else:
                        activation[rows, :, heads] = value
                elif heads[0] is None:
                    activation[rows] += change[:, :, 0]
                else:
                    activation[rows, :, heads] += change
            return activation

        hooks.append((name, hook))
    return hooks


def exact_edge_patching(
    loaded: LoadedModel,
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

    Only ``v``'s input changes and ``u`` is computed before it, so in the patched run
    ``u``'s output is still its base value and the change to ``v``'s input is the fixed
    ``scale * (out_u(source) - out_u(base))``, added at every position. So each patched
    run starts at ``v``'s layer from the base run's residual stream
    (:func:`~circuit_repro.engine.forward.start_at_layer`), edges are batched as
    variants on the batch axis (``token_budget`` tokens per pass, grouped by the
    receiver's layer), and an edge whose difference is zero wherever the metric can see
    it (at or before each prompt's read position) is not run: its score is 0.

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
    bridge = loaded.bridge
    last_block = graph.n_layers - 1

    def start_layer(v: int) -> int:
        return min(graph.downstream[v].layer, last_block)

    resid_names = {
        layer: f"blocks.{layer}.hook_resid_pre"
        for layer in sorted({start_layer(v) for _, v in pairs})
        if layer > 0
    }
    values = torch.zeros(len(pairs), dtype=torch.float64)
    with graph_hooks_enabled(bridge):
        args = (runs.read_positions, runs.attention_mask)
        source_out = record_outputs(loaded, graph, runs.source_tokens, *args)
        with cache_activations(bridge, list(resid_names.values())) as base_resid:
            base_out = record_outputs(loaded, graph, runs.base_tokens, *args)
        with torch.no_grad():
            base_value = prompt_metric(loaded, runs.base_tokens, runs, metric, slice(None))
        delta = scale * (source_out - base_out)  # [prompt, pos, upstream, d_model]
        del source_out, base_out
        positions = torch.arange(seq, device=delta.device)
        visible = positions[None] <= runs.read_positions.to(delta.device)[:, None]
        moves = ((delta != 0).any(dim=-1) & visible[:, :, None]).any(dim=(0, 1))  # [upstream]
        effective = [i for i, (u, _) in enumerate(pairs) if bool(moves[u])]
        per_pass = max(1, token_budget // (n_prompts * seq))
        by_layer: dict[int, list[int]] = {}
        for i in effective:
            by_layer.setdefault(start_layer(pairs[i][1]), []).append(i)
        chunks = [
            (layer, members[j : j + per_pass])
            for layer, members in sorted(by_layer.items())
            for j in range(0, len(members), per_pass)
        ]
        for layer, chunk in tqdm(chunks, desc="edge patching", disable=not progress, unit="pass"):
            n_variants = len(chunk)
            hooks = _single_edge_hooks(graph, [pairs[i] for i in chunk], delta, n_prompts)
            resid = base_resid.get(resid_names.get(layer, ""))
            if resid is not None:
                resid = resid.repeat(n_variants, 1, 1)
            with (
                torch.no_grad(),
                start_at_layer(bridge, layer, resid),
                bridge.hooks(fwd_hooks=hooks),
            ):
                logits = logits_at(
                    loaded,
                    runs.base_tokens.repeat(n_variants, 1),
                    runs.read_positions.repeat(n_variants),
                    None
                    if runs.attention_mask is None
                    else runs.attention_mask.repeat(n_variants, 1),
                )
            per_row = metric(logits, torch.arange(n_prompts).repeat(n_variants)).double()
            change = per_row.view(n_variants, n_prompts) - base_value.double()
            values[chunk] = change.mean(dim=1).cpu()
    table = pd.DataFrame(
        {
            "upstream": [u for u, _ in edges],
            "downstream": [v for _, v in edges],
            "score": values.numpy(),
        }
    )
    table["method"] = "exact"
    table["metric"] = metric_name(metric)
    table["direction"] = runs.direction
    return table


def _single_edge_hooks(
    graph: Graph,
    pairs: Sequence[tuple[int, int]],
    delta: Float[torch.Tensor, "prompt pos upstream d_model"],
    n_prompts: int,
) -> list:
    """Hooks adding ``delta[..., u, :]`` to ``v``'s input copies, for variant ``k``
    (rows ``k * n_prompts ...``) patching edge ``pairs[k] = (u, v)``."""
    by_site: dict[str, list[tuple[int, int | None, int]]] = {}
    for k, (u, v) in enumerate(pairs):
        for name, head in graph.downstream[v].sites:
            by_site.setdefault(name, []).append((k, head, u))

    def make(entries):
        def hook(activation, hook):
            activation = activation.clone()
            for k, head, u in entries:
                rows = slice(k * n_prompts, (k + 1) * n_prompts)
                change = delta[:, : activation.shape[1], u].to(activation.dtype)
                if head is None:
                    activation[rows] += change
                else:
                    activation[rows, :, head] += change
            return activation

        return hook

    return [(name, make(entries)) for name, entries in by_site.items()]
