"""Our AtP, EAP and exact edge patching against TransformerLens's, on the same runs.

TransformerLens (TL) 4.3 ships two of the methods of :mod:`circuit_repro.engine`:
``transformer_lens.tools.analysis.attribution_patching.attribution_patch`` (attribution
patching of nodes or edges) and ``transformer_lens.patching.get_act_patch_direct_path``
(exact patching of one head's output into one later head's query, key or value input).
Each function here runs ours and TL's on the same bridge, prompts and metric and returns
the two sets of numbers aligned item by item, the wall time of each, and a row for the
benchmark table (:data:`ROW_KEYS`, :func:`print_parity_table`):

- :func:`atp_nodes`: :func:`~circuit_repro.engine.attribution.attribution_patching`
  against ``attribution_patch(granularity="node")``;
- :func:`eap_edges`: :func:`~circuit_repro.engine.edges.edge_attribution` (EAP) against
  ``attribution_patch(granularity="edge")``;
- :func:`direct_path`: :func:`~circuit_repro.engine.edges.exact_edge_patching` against
  ``get_act_patch_direct_path``;
- :func:`parity_rows`: the rows the benchmark reports (SmolLM2-135M and tiny models).

How the two definitions line up
-------------------------------

*Runs and sign.* TL's *clean* run is our *source* and its *corrupted* run our *base*.
TL scores ``(a_clean - a_corrupt) . d metric / d a`` with the gradient taken on the
corrupted run; we score ``(a_source - a_base) . d metric / d a`` on the base run. With
``clean = source`` and ``corrupt = base`` these are the same number, with the same sign,
whichever ``direction`` the runs were built with: a positive score means that moving
the component toward the source run raises the metric.

*Metric.* Ours is per row, on the logits at each prompt's read position, and the scores
estimate the change of its mean over prompts. TL's attribution patching takes a metric
of one example's full logits (``[1, pos, vocab] -> scalar``), runs each pair on its own
and averages the per-pair scores: the same mean. Its metric cannot tell which prompt it
is given, so we call ``attribution_patch`` once per prompt with that prompt's metric
(one forward and backward per pair, as it does inside anyway) and average.
``get_act_patch_direct_path`` takes a metric of the whole batch's logits; we pass the
mean over prompts.

*Padding.* TL runs the bridge without an attention mask. The runs of
:func:`~circuit_repro.engine.patching.runs_from_records` are right-padded and have no
mask either, and causal attention keeps padding after a prompt's read position out of
its metric; both sides see identical inputs.

*Nodes* (:func:`atp_nodes`). TL scores, at each position, ``attn_head_out`` at
``attn.hook_z`` (our kind ``head``), ``mlp_out`` at ``hook_mlp_out`` (our ``mlp_out``)
and ``embed`` at ``hook_embed``, for which we have no kind: we score ``resid_pre`` of
block 0 instead. The scores are equal: ``resid_pre_0 = A e + b``, with ``e`` the
``hook_embed`` output, ``A`` fixed (the identity, or Gemma's ``sqrt(d_model)`` scale)
and ``b`` the same in both runs (GPT-2's positional embeddings, or nothing); so the
difference ``A (e_clean - e_corrupt)`` dotted with the gradient ``g`` at ``resid_pre_0``
equals ``(e_clean - e_corrupt) . A^T g``, and ``A^T g`` is the gradient at
``hook_embed``. Scores are summed over positions (``by_position=False``) or compared
position by position.

*Edges* (:func:`eap_edges`). TL's writers ``embed``, ``attn_head_out`` (its
``attn.hook_result``) and ``mlp_out`` are our upstream nodes ``input``, ``a{L}.h{H}`` and
``m{L}``; its readers ``q_input``, ``k_input``, ``v_input``, ``mlp_in`` and ``logits``
are the downstream nodes ``a{L}.h{H}<q>``, ``<k>``, ``<v>``, ``m{L}`` and ``logits`` of
our ``split_qkv=True`` graph, at the same hooks. Our ``input`` writes ``resid_pre_0``,
TL's ``embed`` writes ``hook_embed``; they differ by the positional embedding, which is
the same in both runs, so their clean-minus-corrupt differences are equal. Both graphs
drop the same-layer attention -> MLP edges of parallel blocks (GPT-NeoX). TL scores each
edge at each position; we sum its positions. TL refuses edges under grouped-query
attention (a K/V input serves a group of query heads; our graph has one K/V node per
group there) and where a norm follows the attention output (Gemma 3), so edge parity
runs on multi-head models: tiny GPT-2 and tiny GPT-NeoX.

*Direct path* (:func:`direct_path`). Both patch the edge "sender head -> receiver head's
query (key, value) input" in the same way: the sender's source-minus-base output is
added, at every position, to the receiver's own copy of the residual stream
(``attn.hook_{q,k,v}_input[:, :, receiver]``, the per-head fork that
``use_split_qkv_input`` makes *before* the attention norm); the norm, the receiver and
everything after it recompute, and every other reader, the sender's other readers
included, sees the base run. TL forms the sender's difference as
``(z_clean - z_corrupt)[:, :, h] @ W_O[h]``, we as the difference of ``attn.hook_result``
at head ``h``: the same vector, the output bias cancelling. Neither freezes the layer
norm: both recompute the receiver's norm on its patched copy, so the definitions agree
without a choice of configuration. TL returns the patched metric; we return patched minus
base, so TL's own unpatched corrupted metric is subtracted from its values. Under
grouped-query attention a key or value input serves a group of query heads, TL refuses
``k`` and ``v``, and our graph's K/V nodes are per group: queries only there.

*Precision.* AtP and EAP sum the same float products in another order, so the two
agree to rounding (about 1e-16 relative in float64). ``get_act_patch_direct_path``
stores each patched metric in a float32 tensor (``torch.zeros(n_layers, n_heads)``), so
its values are rounded to float32 even on a float64 model: a difference of up to half a
float32 ulp of the patched metric (``2**-24 |metric|``) remains, which on a float32
model adds to the forward pass's own rounding. The metric values TL computed before
that rounding (:func:`direct_path` keeps them) agree with ours to 1e-16 on the tiny
float64 models, and to 2e-8 on SmolLM2-135M in float64 (Llama-style models compute
their norms and attention softmax in float32 even in float64, and the two sides' float64
noise occasionally rounds differently there); on SmolLM2 in float32, ours and TL's
returned values differ by a few float32 ulps of the metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from circuit_repro.bench.patching import ioi_bench_records
from circuit_repro.engine.attribution import attribution_patching
from circuit_repro.engine.edges import Graph, edge_attribution, exact_edge_patching
from circuit_repro.engine.hooks import Component, all_components
from circuit_repro.engine.metrics import Metric
from circuit_repro.engine.patching import DEFAULT_TOKEN_BUDGET, PatchingRuns, runs_from_records

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel

#: The columns of a benchmark row, in table order.
ROW_KEYS = (
    "comparison",
    "model",
    "items",
    "ours_seconds",
    "transformer_lens_seconds",
    "speedup",
    "max_abs_diff",
    "max_abs_value",
    "tolerance_note",
    "sign_convention",
)

ATTRIBUTION_SIGN = (
    "ours (source - base) . grad at base = TL (clean - corrupt) . grad at corrupt, "
    "with TL clean = our source, corrupt = our base: same sign"
)
DIRECT_PATH_SIGN = (
    "patched - base metric; TL's patched metric minus its unpatched corrupted metric, "
    "with TL corrupted = our base"
)


def ioi_runs(loaded: LoadedModel, n_prompts: int, seed: int = 0) -> tuple[PatchingRuns, Metric]:
    """Clean -> corrupt runs of ``n_prompts`` one-template IOI prompts and their
    logit-difference metric (:func:`~circuit_repro.bench.patching.ioi_bench_records`)."""
    records = ioi_bench_records(loaded.tokenizer, n_prompts, seed=seed)
    return runs_from_records(loaded.tokenizer, records)


def prompt_metric_of_logits(
    metric: Metric, runs: PatchingRuns, prompt: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """TL's attribution metric for prompt ``prompt``: ``[1, pos, vocab]`` logits -> the
    scalar metric at its read position."""
    read, index = int(runs.read_positions[prompt]), torch.tensor([prompt])

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:
        return metric(logits[:, read], index)[0]

    return tl_metric


def mean_metric_of_logits(
    metric: Metric, runs: PatchingRuns
) -> Callable[[torch.Tensor], torch.Tensor]:
    """TL's batch patching metric: ``[prompts, pos, vocab]`` logits -> the metric at each
    prompt's read position, averaged over prompts."""
    prompts = torch.arange(runs.n_prompts)

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:
        rows = prompts.to(logits.device)
        return metric(logits[rows, runs.read_positions.to(logits.device)], prompts).mean()

    return tl_metric


def transformer_lens_attribution(
    loaded: LoadedModel, runs: PatchingRuns, metric: Metric, granularity: str
) -> dict:
    """TL's ``attribution_patch`` scores averaged over prompts, keyed by its ``Node``
    (``granularity="node"``) or ``(writer, reader)`` pair (``"edge"``), per position."""
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    config = EdgeAttributionConfig(granularity=granularity)
    totals: dict = {}
    for prompt in range(runs.n_prompts):
        pair = slice(prompt, prompt + 1)
        result = attribution_patch(
            loaded.bridge,
            runs.source_tokens[pair],
            runs.base_tokens[pair],
            prompt_metric_of_logits(metric, runs, prompt),
            config,
        )
        scores = result.node_scores if granularity == "node" else result.edge_scores
        for key, score in scores.items():
            totals[key] = totals.get(key, 0.0) + score / runs.n_prompts
    return totals


def graph_node_name(node) -> str:
    """Our graph's name for a TL ``Node`` (``input``, ``a{L}.h{H}``, ``a{L}.h{H}<q>``,
    ``m{L}``, ``logits``); TL's ``mlp_out`` writer and ``mlp_in`` reader are both ``m{L}``,
    as in our graph."""
    if node.kind == "embed":
        return "input"
    if node.kind == "attn_head_out":
        return f"a{node.layer}.h{node.head}"
    if node.kind in ("q_input", "k_input", "v_input"):
        return f"a{node.layer}.h{node.head}<{node.kind[0]}>"
    if node.kind in ("mlp_out", "mlp_in"):
        return f"m{node.layer}"
    if node.kind == "logits":
        return "logits"
    raise ValueError(f"no node of our graph matches TransformerLens node {node}")


def node_component(node, by_position: bool) -> Component:
    """The component our AtP scores for a TL node (``embed`` -> ``resid_pre`` of block 0,
    see the module docstring)."""
    position = node.position if by_position else None
    if node.kind == "embed":
        return Component("resid_pre", 0, None, position)
    if node.kind == "attn_head_out":
        return Component("head", node.layer, node.head, position)
    if node.kind == "mlp_out":
        return Component("mlp_out", node.layer, None, position)
    raise ValueError(f"no component matches TransformerLens node {node}")


def component_label(component: Component) -> str:
    """A component as a graph node name, with ``@{position}`` when it has one."""
    name = {
        "resid_pre": "input",
        "head": f"a{component.layer}.h{component.index}",
        "mlp_out": f"m{component.layer}",
    }[component.kind]
    return name if component.position is None else f"{name}@{component.position}"


def warm_up(loaded: LoadedModel, runs: PatchingRuns) -> None:
    """One plain forward pass, so that neither timed side pays first-call costs."""
    with torch.no_grad():
        loaded.bridge(runs.base_tokens[:1])


def comparison_result(
    comparison: str,
    loaded: LoadedModel,
    labels: list[str],
    ours: np.ndarray,
    theirs: np.ndarray,
    ours_seconds: float,
    theirs_seconds: float,
    tolerance_note: str,
    sign_convention: str,
) -> dict:
    """A benchmark row (:data:`ROW_KEYS`) plus the aligned arrays: ``labels``,
    ``ours_values`` and ``transformer_lens_values``."""
    return {
        "comparison": comparison,
        "model": loaded.model_id,
        "items": len(labels),
        "ours_seconds": ours_seconds,
        "transformer_lens_seconds": theirs_seconds,
        "speedup": theirs_seconds / ours_seconds,
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "max_abs_value": float(np.abs(ours).max()),
        "tolerance_note": tolerance_note,
        "sign_convention": sign_convention,
        "labels": labels,
        "ours_values": ours,
        "transformer_lens_values": theirs,
    }


def benchmark_row(result: dict) -> dict:
    """The :data:`ROW_KEYS` of a comparison result (without its arrays)."""
    return {key: result[key] for key in ROW_KEYS}


# ------------------------------------------------------------------------- AtP nodes


def atp_nodes(
    loaded: LoadedModel, runs: PatchingRuns, metric: Metric, by_position: bool = False
) -> dict:
    """Our AtP against TL's ``attribution_patch(granularity="node")`` on every node TL
    scores: each head's ``z``, each MLP output and the embedding.

    Ours scores ``all_components(head)``, ``all_components(mlp_out)`` and ``resid_pre``
    of block 0 (for TL's ``embed``, see the module docstring) in one
    :func:`~circuit_repro.engine.attribution.attribution_patching` call; TL scores every
    node at every position, one prompt pair at a time. With ``by_position=False`` TL's
    scores are summed over positions and ours cover all positions; with True both are
    per position.

    Returns:
        The benchmark row (:data:`ROW_KEYS`) with ``labels`` (``input``, ``a{L}.h{H}``,
        ``m{L}``, with ``@{position}`` when ``by_position``), ``ours_values`` and
        ``transformer_lens_values`` aligned on them.
    """
    bridge = loaded.bridge
    positions = range(runs.base_tokens.shape[1]) if by_position else [None]
    components = (
        [Component("resid_pre", 0, None, position) for position in positions]
        + all_components(bridge, "head", positions)
        + all_components(bridge, "mlp_out", positions)
    )
    warm_up(loaded, runs)
    started = time.perf_counter()
    table = attribution_patching(loaded, runs, components, metric)
    ours_seconds = time.perf_counter() - started

    started = time.perf_counter()
    node_scores = transformer_lens_attribution(loaded, runs, metric, "node")
    theirs_seconds = time.perf_counter() - started
    theirs_by_component: dict[Component, float] = {}
    for node, score in node_scores.items():
        component = node_component(node, by_position)
        theirs_by_component[component] = theirs_by_component.get(component, 0.0) + score
    if set(theirs_by_component) != set(components):
        raise AssertionError("TransformerLens scored other nodes than ours")

    return comparison_result(
        "AtP nodes (heads, MLP outputs, embedding)" + (" x positions" if by_position else ""),
        loaded,
        [component_label(c) for c in components],
        table["score"].to_numpy(),
        np.array([theirs_by_component[c] for c in components]),
        ours_seconds,
        theirs_seconds,
        "same products summed in another order: rounding only",
        ATTRIBUTION_SIGN,
    )


# ------------------------------------------------------------------------- EAP edges


def eap_edges(loaded: LoadedModel, runs: PatchingRuns, metric: Metric) -> dict:
    """Our EAP against TL's ``attribution_patch(granularity="edge")`` on every edge.

    Ours: :func:`~circuit_repro.engine.edges.edge_attribution` (``method="eap"``) on the
    ``split_qkv=True`` graph; TL's per-position edge scores are summed over positions and
    matched by name (see the module docstring). TL raises ``ValueError`` under
    grouped-query attention and on post-norm attention (Gemma 3).

    Returns:
        The benchmark row (:data:`ROW_KEYS`) with ``labels`` (``"u -> v"``, in our
        table's order), ``ours_values`` and ``transformer_lens_values``.
    """
    warm_up(loaded, runs)
    started = time.perf_counter()
    table = edge_attribution(loaded, runs, metric, method="eap", split_qkv=True)
    ours_seconds = time.perf_counter() - started

    started = time.perf_counter()
    edge_scores = transformer_lens_attribution(loaded, runs, metric, "edge")
    theirs_seconds = time.perf_counter() - started
    theirs_by_edge: dict[tuple[str, str], float] = {}
    for (writer, reader), score in edge_scores.items():
        edge = (graph_node_name(writer), graph_node_name(reader))
        theirs_by_edge[edge] = theirs_by_edge.get(edge, 0.0) + score
    edges = list(zip(table["upstream"], table["downstream"], strict=True))
    if set(theirs_by_edge) != set(edges):
        raise AssertionError("TransformerLens's edges are not our graph's edges")

    return comparison_result(
        "EAP edges (split q/k/v inputs)",
        loaded,
        [f"{u} -> {v}" for u, v in edges],
        table["score"].to_numpy(),
        np.array([theirs_by_edge[edge] for edge in edges]),
        ours_seconds,
        theirs_seconds,
        "same products summed in another order: rounding only",
        ATTRIBUTION_SIGN,
    )


# ----------------------------------------------------------------------- direct path


def receiver_edges(
    loaded: LoadedModel, senders: Sequence[tuple[int, int]], receiver_kinds: Sequence[str]
) -> list[tuple[str, str]]:
    """Edges ``a{L}.h{H} -> a{L'}.h{H'}<kind>`` from each sender to every head of every
    later layer, in TL's order: sender, kind, receiver layer, receiver head."""
    return [
        (f"a{layer}.h{head}", f"a{receiver_layer}.h{receiver_head}<{kind}>")
        for layer, head in senders
        for kind in receiver_kinds
        for receiver_layer in range(layer + 1, loaded.n_layers)
        for receiver_head in range(loaded.n_heads)
    ]


def direct_path(
    loaded: LoadedModel,
    runs: PatchingRuns,
    metric: Metric,
    senders: Sequence[tuple[int, int]],
    receiver_kinds: Sequence[str] = ("q",),
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> dict:
    """Our exact edge patching against TL's ``get_act_patch_direct_path`` on the edges
    from each sender head ``(layer, head)`` into the query (key, value) input of every
    head of every later layer.

    The two compute the same intervention (module docstring, "Direct path"): the
    sender's source-minus-base output is added at every position to the receiver's own
    pre-norm copy of the residual stream; the receiver's norm and everything after it
    recompute (neither freezes the layer norm); every other reader sees the base run.
    Ours: :func:`~circuit_repro.engine.edges.exact_edge_patching` on the
    ``split_qkv=True`` graph, the change of the mean metric (patched - base). TL: the
    patched mean metric, one forward pass per receiver, minus its own unpatched
    corrupted (base) metric; the caches it needs (``hook_z`` of the source and base
    runs) are part of its time.

    TL stores each patched metric in float32 (module docstring, "Precision"), so a
    difference of up to ``2**-24 |patched metric|`` remains on a float64 model; the
    values its metric returned before that rounding are kept too.

    Args:
        senders: Sender heads ``(layer, head)``.
        receiver_kinds: Receiver inputs among ``q``, ``k``, ``v``. Under grouped-query
            attention only ``q``: a key or value input serves a group of query heads, our
            graph has one such node per group and TL refuses them.
        token_budget: Tokens per forward pass of our exact edge patching.

    Returns:
        The benchmark row (:data:`ROW_KEYS`, from TL's returned values) with ``labels``
        (``"u -> v"``), ``ours_values``, ``transformer_lens_values`` (both patched -
        base), ``transformer_lens_unrounded_values`` (the metric values TL computed,
        recorded by its metric before it rounds them to float32, minus the base) and
        ``base_value`` (TL's unpatched base metric).
    """
    from transformer_lens.patching import get_act_patch_direct_path

    if not senders:
        raise ValueError("no sender heads to patch from")
    unknown = set(receiver_kinds) - {"q", "k", "v"}
    if unknown or not receiver_kinds:
        raise ValueError(f"receiver kinds must be among q, k, v; got {list(receiver_kinds)}")
    if loaded.n_kv_heads != loaded.n_heads and set(receiver_kinds) != {"q"}:
        raise ValueError(
            f"{loaded.model_id} has grouped-query attention ({loaded.n_heads} query heads, "
            f"{loaded.n_kv_heads} K/V heads): key and value inputs are per K/V group, so "
            "only receiver_kinds=('q',) compares like with like"
        )
    graph = Graph.from_model(loaded, split_qkv=True)
    if not graph.per_head_outputs:
        raise ValueError(
            f"{loaded.model_id} normalises its attention output before the residual add: "
            "its heads are not nodes of the graph, and TL refuses direct paths there"
        )
    edges = receiver_edges(loaded, senders, receiver_kinds)
    bridge = loaded.bridge

    warm_up(loaded, runs)
    started = time.perf_counter()
    table = exact_edge_patching(
        loaded, runs, metric, graph=graph, edges=edges, token_budget=token_budget
    )
    ours_seconds = time.perf_counter() - started

    tl_metric = mean_metric_of_logits(metric, runs)
    # TL rounds each patched metric into a float32 tensor; the values its metric returned
    # are recorded first, in its order (one call per receiver, layer by layer).
    unrounded: list[float] = []

    def recording_metric(logits: torch.Tensor) -> torch.Tensor:
        value = tl_metric(logits)
        unrounded.append(value.item())
        return value

    started = time.perf_counter()
    with torch.no_grad():
        z_names = {f"blocks.{layer}.attn.hook_z" for layer, _ in senders}
        _, clean_cache = bridge.run_with_cache(
            runs.source_tokens, names_filter=lambda name: name in z_names
        )
        base_logits, corrupted_cache = bridge.run_with_cache(
            runs.base_tokens, names_filter=lambda name: name in z_names
        )
        base_value = float(tl_metric(base_logits))
        theirs = []
        for layer, head in senders:
            for kind in receiver_kinds:
                patched = get_act_patch_direct_path(
                    bridge,
                    runs.base_tokens,
                    clean_cache,
                    corrupted_cache,
                    recording_metric,
                    src_layer=layer,
                    src_head=head,
                    component=kind,
                    verbose=False,
                )
                theirs.append(patched[layer + 1 :].double().cpu().flatten() - base_value)
    theirs_seconds = time.perf_counter() - started
    if len(unrounded) != len(edges):
        raise AssertionError(f"TL computed {len(unrounded)} patched metrics for {len(edges)} edges")

    kinds = ", ".join(receiver_kinds)
    result = comparison_result(
        f"direct path sender head -> receiver {kinds} (exact)",
        loaded,
        [f"{u} -> {v}" for u, v in edges],
        table["score"].to_numpy(),
        torch.cat(theirs).numpy() if theirs else np.zeros(0),
        ours_seconds,
        theirs_seconds,
        "TL stores patched metrics in float32: diff up to 2^-24 x metric, plus the "
        "forward passes' rounding",
        DIRECT_PATH_SIGN,
    )
    result["transformer_lens_unrounded_values"] = np.array(unrounded) - base_value
    result["base_value"] = base_value
    return result


# ------------------------------------------------------------------- benchmark rows


def every_sender(loaded: LoadedModel) -> list[tuple[int, int]]:
    """Every head that has a later layer to send to."""
    return [(layer, head) for layer in range(loaded.n_layers - 1) for head in range(loaded.n_heads)]


def sampled_senders(loaded: LoadedModel, n_senders: int, seed: int) -> list[tuple[int, int]]:
    """``n_senders`` heads of :func:`every_sender`, drawn without replacement with
    ``numpy.random.default_rng(seed)``, in layer order."""
    senders = every_sender(loaded)
    chosen = np.random.default_rng(seed).choice(len(senders), size=n_senders, replace=False)
    return [senders[i] for i in sorted(chosen)]


def extrapolated_to_every_sender(
    result: dict,
    loaded: LoadedModel,
    senders: Sequence[tuple[int, int]],
    receiver_kinds: Sequence[str],
) -> dict:
    """The benchmark row of a :func:`direct_path` result on some ``senders``, with both
    times scaled to every sender by the ratio of edge counts: each side's cost grows
    with the number of edges (TL runs one forward pass per edge; ours one copy of the
    prompts per edge, batched)."""
    every = every_sender(loaded)
    all_edges = len(receiver_edges(loaded, every, receiver_kinds))
    factor = all_edges / result["items"]
    row = benchmark_row(result)
    row["comparison"] += (
        f"; {len(senders)} of {len(every)} senders (seeded) compared, "
        f"seconds extrapolated x{factor:.0f} to all {all_edges} edges"
    )
    row["ours_seconds"] *= factor
    row["transformer_lens_seconds"] *= factor
    return row


def parity_rows(
    smollm2_loaded: LoadedModel,
    tiny_models: dict[str, LoadedModel],
    n_prompts: int,
    n_direct_path_senders: int = 3,
    seed: int = 0,
) -> list[dict]:
    """The parity rows of the benchmark, each on ``n_prompts`` IOI prompts (seed ``seed``).

    - AtP nodes on SmolLM2-135M (``smollm2_loaded``);
    - EAP edges on ``tiny_models["tiny-gpt2"]`` and ``tiny_models["tiny-neox"]``
      (TL refuses edges under SmolLM2's grouped-query attention);
    - direct path into queries on SmolLM2-135M for ``n_direct_path_senders`` seeded
      sender heads (both sides run one forward pass per receiver head, tens of seconds
      per sender on a CPU), both times extrapolated to every sender and the row saying
      so;
    - direct path into queries, keys and values on tiny GPT-2, every sender.

    Returns:
        Rows with the :data:`ROW_KEYS`, for :func:`print_parity_table`.
    """
    rows = []
    runs, metric = ioi_runs(smollm2_loaded, n_prompts, seed)
    rows.append(benchmark_row(atp_nodes(smollm2_loaded, runs, metric)))
    for model_id in ("tiny-gpt2", "tiny-neox"):
        tiny_runs, tiny_metric = ioi_runs(tiny_models[model_id], n_prompts, seed)
        rows.append(benchmark_row(eap_edges(tiny_models[model_id], tiny_runs, tiny_metric)))
    senders = sampled_senders(smollm2_loaded, n_direct_path_senders, seed)
    sampled = direct_path(smollm2_loaded, runs, metric, senders, ("q",))
    rows.append(extrapolated_to_every_sender(sampled, smollm2_loaded, senders, ("q",)))
    gpt2 = tiny_models["tiny-gpt2"]
    gpt2_runs, gpt2_metric = ioi_runs(gpt2, n_prompts, seed)
    everything = direct_path(gpt2, gpt2_runs, gpt2_metric, every_sender(gpt2), ("q", "k", "v"))
    rows.append(benchmark_row(everything))
    return rows


def print_parity_table(rows: Sequence[dict]) -> None:
    """The parity rows as a Markdown table (speedup = TL seconds / ours)."""
    print(
        "| comparison | model | items | ours (s) | TransformerLens (s) | speedup | "
        "max abs diff | max abs value | tolerance | sign convention |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for row in rows:
        print(
            f"| {row['comparison']} | {row['model']} | {row['items']} | "
            f"{row['ours_seconds']:.2f} | {row['transformer_lens_seconds']:.2f} | "
            f"{row['speedup']:.1f}x | {row['max_abs_diff']:.1e} | {row['max_abs_value']:.1e} | "
            f"{row['tolerance_note']} | {row['sign_convention']} |"
        )
