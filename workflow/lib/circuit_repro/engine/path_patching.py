# (jaxtyping shape strings such as "sender prompt" are not forward references)
"""Path patching: the effect of a sender head that flows only through given receivers.

Activation patching (:mod:`circuit_repro.engine.patching`) measures a head's total
effect, through every path from it to the logits. Path patching (Wang et al. 2022,
Appendix B; used by Merullo et al. 2023 to compare circuits across tasks) keeps only
the paths that end in chosen *receivers*: the query, key or value inputs of later
heads, or the final residual stream. For each sender head:

1. Run the *base* input (e.g. clean) with the sender's output taken from the *source*
   run (e.g. corrupt) and every other head's output frozen to its base value; MLPs
   recompute. Record the receivers' inputs (their q, k or v). Freezing the other heads
   cuts every path that passes through another head before reaching a receiver.
2. Run the base input again with only the receivers' q/k/v set to the values recorded
   in step 1, and measure the metric. Everything downstream of the receivers
   recomputes, so the effect is the one carried by sender -> receiver paths.

With ``receivers=None`` the receiver is the final residual stream: the metric of step
1 itself (the sender's direct effect plus the MLPs it feeds).

The computation is split into a plan and its two steps, so that each can be read and
tested on its own: :func:`plan_path_patching` runs the base and source passes once and
decides what every later pass computes (:class:`PathPatchingPlan`); :func:`step_one`
and :func:`step_two` are the two steps above; :func:`path_patching` composes them.

Only what can differ from the base run is computed (DESIGN.md, "Performance model").
In step 1 every head is frozen and MLPs and norms act position by position, so each
(prompt, position) is an independent one-token row: the rows from the prompt's first
token that differs between source and base up to its read position (just the read
position into the final residual stream). Step 1 starts at the sender's layer and
stops after the last receiver's. Step 2 starts at the first receiver's layer and
computes positions from the first differing token on, reading earlier keys and values
from the base run's cache (:class:`~circuit_repro.engine.forward.PrefixCache`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from circuit_repro.engine.forward import (
    PrefixCache,
    logits_at,
    prefix_reuse_supported,
    start_at_layer,
    stop_after,
)
from circuit_repro.engine.hooks import Component, cache_activations, with_hooks
from circuit_repro.engine.metrics import Metric
from circuit_repro.engine.patching import DEFAULT_TOKEN_BUDGET, PatchingRuns, result_table

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel

#: Where senders are patched and receivers put back: every position (Wang et al. 2022)
#: or each prompt's read position only (Merullo et al. 2023's code, position -1).
POSITION_MODES = ("all", "read")

# Step-1 values of the receivers' inputs: hook name -> one ``[pairs, heads, d_head]``
# tensor per sender.
Recorded = dict[str, list[torch.Tensor]]


@dataclass
class PathPatchingPlan:
    """What both steps of path patching share (built by :func:`plan_path_patching`).

    Attributes:
        runs: Base/source tokens and read positions.
        senders: The sender heads (``head`` components, optionally at one position).
        receivers: The receivers (``q``/``k``/``v`` components), or None for the final
            residual stream.
        base: The base run's activations: every layer's ``hook_z`` and
            ``hook_resid_pre``, and the receivers' hooks, ``[prompts, pos, ...]``.
        source: The source run's ``hook_z`` of every layer.
        pair_prompt: ``[pairs]`` prompt of each step-1 row.
        pair_position: ``[pairs]`` position of each step-1 row: each prompt's positions
            from its first token that differs between source and base to its read
            position (the read position alone when ``receivers`` is None).
        chunks: Sender indices per step-1 pass; a pass holds senders of one layer.
        receiver_names: Hook names of the receivers (sorted).
        receiver_end: Last layer step 1 computes (the last receiver's layer; the last
            layer when ``receivers`` is None).
        prefix_cache: The base run's keys and values for step 2, or None where prefix
            reuse does not reproduce a full run (or is not needed).
        token_budget: Maximum rows x positions per forward pass.
    """

    runs: PatchingRuns
    senders: list[Component]
    receivers: list[Component] | None
    base: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor]
    pair_prompt: Int[torch.Tensor, " pair"]
    pair_position: Int[torch.Tensor, " pair"]
    chunks: list[list[int]]
    receiver_names: list[str]
    receiver_end: int
    prefix_cache: PrefixCache | None
    token_budget: int

    @property
    def n_pairs(self) -> int:
        return len(self.pair_prompt)

    def rows_of(self, activation: torch.Tensor) -> torch.Tensor:
        """``[n_pairs, 1, ...]``: the step-1 rows of a ``[n_prompts, pos, ...]`` activation."""
        return activation[self.pair_prompt, self.pair_position][:, None]


@dataclass
class RunCache:
    """The base and source runs path patching reads, computed once for any number of
    calls on the same prompts (e.g. the stages of a circuit search, in both position
    modes): ``base`` holds every layer's ``hook_z``, ``hook_resid_pre`` and head q/k/v
    inputs, ``source`` every ``hook_z``; ``prefix_cache`` the base run's keys and values
    (None where a suffix run would not reproduce a full run)."""

    runs: PatchingRuns
    base: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor]
    prefix_cache: PrefixCache | None
    base_metric: Float[torch.Tensor, " prompt"] | None = None
    source_metric: Float[torch.Tensor, " prompt"] | None = None


@torch.no_grad()
def cache_runs(loaded: LoadedModel, runs: PatchingRuns, metric: Metric | None = None) -> RunCache:
    """Run the base and source inputs once and keep what every plan reads, and with a
    ``metric`` each prompt's metric in both runs (``base_metric``, ``source_metric``)."""
    bridge, n_layers = loaded.bridge, loaded.n_layers
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    qkv_names = [f"blocks.{layer}.attn.hook_{kind}" for layer in range(n_layers) for kind in "qkv"]
    prompts = torch.arange(runs.n_prompts)
    with cache_activations(bridge, z_names + resid_names + qkv_names) as base:
        base_logits = logits_at(loaded, runs.base_tokens, runs.read_positions, runs.attention_mask)
    with cache_activations(bridge, z_names) as source:
        source_logits = logits_at(
            loaded, runs.source_tokens, runs.read_positions, runs.attention_mask
        )
    prefix_cache = None
    if prefix_reuse_supported(loaded, runs.base_tokens, runs.read_positions):
        prefix_cache = PrefixCache(loaded, runs.base_tokens)
    return RunCache(
        runs=runs,
        base=base,
        source=source,
        prefix_cache=prefix_cache,
        base_metric=None if metric is None else metric(base_logits, prompts),
        source_metric=None if metric is None else metric(source_logits, prompts),
    )


@torch.no_grad()
def plan_path_patching(
    loaded: LoadedModel,
    runs: PatchingRuns,
    senders: Sequence[Component],
    receivers: Sequence[Component] | None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    positions: str = "all",
    cached: RunCache | None = None,
) -> PathPatchingPlan:
    """Check the senders and receivers, run the base and source passes, plan the steps.

    ``positions="read"`` restricts step 1 to each prompt's read position, so senders are
    patched, and receivers recorded and put back, there alone (see :func:`path_patching`).
    ``cached`` (:func:`cache_runs` on the same ``runs``) saves the base and source passes.

    Raises:
        ValueError: a sender is not a head, a receiver not a head's q, k or v, or
            ``positions`` is neither "all" nor "read".
    """
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
    bridge, n_prompts = loaded.bridge, runs.n_prompts
    n_layers = loaded.n_layers
    for sender in senders:
        if sender.kind != "head":
            raise ValueError(f"senders must be heads, got {sender.kind!r}")
    for receiver in receivers or []:
        if receiver.kind not in ("q", "k", "v"):
            raise ValueError(
                f"receivers must be q, k or v of heads, got {receiver.kind!r}; use "
                "receivers=None for the final residual stream"
            )
    receiver_names = sorted({r.hook_name for r in receivers or []})
    if cached is None:
        z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
        resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
        with cache_activations(bridge, z_names + resid_names + receiver_names) as base:
            bridge(runs.base_tokens, attention_mask=runs.attention_mask)
        with cache_activations(bridge, z_names) as source:
            bridge(runs.source_tokens, attention_mask=runs.attention_mask)
    elif cached.runs is not runs:
        raise ValueError("the run cache was made for other runs; call cache_runs(loaded, runs)")
    else:
        base, source = cached.base, cached.source

    # Step 1 rows: (prompt, position) pairs that can differ from the base run.
    read = runs.read_positions
    if receivers is None or positions == "read":
        first_differing = read.clone()
    else:
        differs = (runs.base_tokens != runs.source_tokens).int()
        differs[torch.arange(n_prompts), read] = 1  # no difference: only the read position
        first_differing = torch.minimum(differs.argmax(dim=1), read)
    pair_prompt = torch.cat(
        [torch.full((int(read[p] - first_differing[p]) + 1,), p) for p in range(n_prompts)]
    )
    pair_position = torch.cat(
        [torch.arange(int(first_differing[p]), int(read[p]) + 1) for p in range(n_prompts)]
    )
    n_pairs = len(pair_prompt)

    prefix_cache = None
    if receivers is not None and cached is not None:
        prefix_cache = cached.prefix_cache
    elif receivers is not None and prefix_reuse_supported(loaded, runs.base_tokens, read):
        prefix_cache = PrefixCache(loaded, runs.base_tokens)

    variants_per_pass = max(1, token_budget // n_pairs)
    # A step-1 pass starts at its earliest sender's layer: passes hold senders of one layer.
    by_layer: dict[int, list[int]] = {}
    for i, sender in enumerate(senders):
        by_layer.setdefault(sender.layer, []).append(i)
    chunks = [
        members[i : i + variants_per_pass]
        for _, members in sorted(by_layer.items())
        for i in range(0, len(members), variants_per_pass)
    ]
    receiver_end = max((r.layer for r in receivers or []), default=n_layers - 1)
    return PathPatchingPlan(
        runs=runs,
        senders=list(senders),
        receivers=None if receivers is None else list(receivers),
        base=base,
        source=source,
        pair_prompt=pair_prompt,
        pair_position=pair_position,
        chunks=chunks,
        receiver_names=receiver_names,
        receiver_end=receiver_end,
        prefix_cache=prefix_cache,
        token_budget=token_budget,
    )


@torch.no_grad()
def step_one(
    loaded: LoadedModel, plan: PathPatchingPlan, metric: Metric, progress: bool = True
) -> Recorded | Float[torch.Tensor, "sender prompt"]:
    """Step 1: each sender from the source run, every other head frozen to the base run.

    Each pass runs the plan's one-token rows for the senders of one chunk (stacked as
    variants on the batch axis), from the senders' layer to the last receiver's.

    Returns:
        With receivers: the receivers' recorded inputs, hook name -> one ``[pairs,
        heads, d_head]`` tensor per sender. With ``receivers=None``: the metric,
        ``[senders, prompts]`` (float64).
    """
    bridge, runs, senders, base, source = (
        loaded.bridge,
        plan.runs,
        plan.senders,
        plan.base,
        plan.source,
    )
    n_prompts, n_pairs, receivers = runs.n_prompts, plan.n_pairs, plan.receivers
    rows_of, pair_prompt, pair_position = plan.rows_of, plan.pair_prompt, plan.pair_position
    per_row_values = torch.empty(len(senders), n_prompts, dtype=torch.float64)
    prompt_index = torch.arange(n_prompts)
    recorded: Recorded = {name: [None] * len(senders) for name in plan.receiver_names}

    def entering_rows(layer: int, n_variants: int):
        """Step 1 enters ``layer`` with the base residual stream of its rows."""
        resid = rows_of(base[f"blocks.{layer}.hook_resid_pre"]).repeat(n_variants, 1, 1)
        if layer > 0:
            return start_at_layer(bridge, layer, resid)
        # A row's token sits at index 0: replace its embedding (which would carry
        # position 0's learned position embedding) with the real one.
        return with_hooks(bridge, [("blocks.0.hook_resid_pre", lambda x, hook: resid)])

    desc = "path patching" if receivers is None else "path patching, step 1"
    for chunk in tqdm(plan.chunks, desc=desc, disable=not progress, unit="pass"):
        n_variants = len(chunk)
        layer_of_chunk = senders[chunk[0]].layer

        # Sender from the source run, every other head frozen to the base run.
        def freeze_hook(
            layer: int, chunk=chunk, n_variants=n_variants, layer_of_chunk=layer_of_chunk
        ):
            name = f"blocks.{layer}.attn.hook_z"
            frozen_base = rows_of(base[name]).repeat(n_variants, 1, 1, 1)
            source_z = rows_of(source[name])

            def hook(z, hook):
                frozen = frozen_base.clone()
                if layer != layer_of_chunk:
                    return frozen.to(z.dtype)
                for v, i in enumerate(chunk):
                    sender = senders[i]
                    rows = slice(None)
                    if sender.position is not None:
                        rows = pair_position == sender.position
                    variant = frozen[v * n_pairs : (v + 1) * n_pairs]
                    variant[rows, 0, sender.index] = source_z[rows, 0, sender.index]
                return frozen.to(z.dtype)

            return hook

        freeze = [
            (f"blocks.{layer}.attn.hook_z", freeze_hook(layer))
            for layer in range(layer_of_chunk, plan.receiver_end + 1)
        ]
        step_one_tokens = runs.base_tokens[pair_prompt, pair_position][:, None]
        with (
            entering_rows(layer_of_chunk, n_variants),
            with_hooks(bridge, freeze),
            cache_activations(bridge, plan.receiver_names) as step_one,
            stop_after(bridge, None if receivers is None else plan.receiver_end) as stopped,
        ):
            zeros = torch.zeros(n_variants * n_pairs, dtype=torch.long)
            logits = logits_at(loaded, step_one_tokens.repeat(n_variants, 1), zeros)
        if receivers is None:  # one row per prompt, in prompt order
            per_row = metric(logits, prompt_index.repeat(n_variants))
            per_row_values[chunk] = per_row.double().view(n_variants, n_prompts)
            continue
        if not stopped():
            raise RuntimeError("step 1 of path patching did not reach its receivers")
        for name in plan.receiver_names:
            # A receiver in a layer before the senders keeps its base value.
            if name in step_one:
                by_variant = step_one[name][:, 0].unflatten(0, (n_variants, n_pairs))
            else:
                by_variant = rows_of(base[name])[:, 0][None].expand(n_variants, -1, -1, -1)
            for v, i in enumerate(chunk):
                recorded[name][i] = by_variant[v]  # [pairs, heads, d_head]
    return per_row_values if receivers is None else recorded


@torch.no_grad()
def step_two(
    loaded: LoadedModel,
    plan: PathPatchingPlan,
    recorded: Recorded,
    metric: Metric,
    progress: bool = True,
) -> Float[torch.Tensor, "sender prompt"]:
    """Step 2: the base run with the receivers' inputs taken from step 1.

    Prompts are grouped by read position, and each group computes only the positions
    from its first differing token to its last read position (so little padding is
    computed); a pass stacks as many senders as the token budget allows.

    Returns:
        ``[senders, prompts]`` metric values (float64).
    """
    bridge, runs, receivers, base = loaded.bridge, plan.runs, plan.receivers, plan.base
    if receivers is None:
        raise ValueError("step 2 needs receivers; with receivers=None step 1 is the result")
    n_senders = len(plan.senders)
    pair_prompt, pair_position = plan.pair_prompt, plan.pair_position
    prefix_cache, token_budget = plan.prefix_cache, plan.token_budget
    receiver_start = min(r.layer for r in receivers)
    read = runs.read_positions
    result = torch.empty(n_senders, runs.n_prompts, dtype=torch.float64)
    groups: dict[int, list[int]] = {}
    for prompt in range(runs.n_prompts):
        groups.setdefault(int(read[prompt]), []).append(prompt)
    passes = []
    for end, prompts in sorted(groups.items()):
        prompts = torch.tensor(prompts)
        in_group = torch.isin(pair_prompt, prompts)
        start = int(pair_position[in_group].min()) if prefix_cache is not None else 0
        # Cached positions count too: the cache is copied for every variant.
        per_pass = max(1, token_budget // (len(prompts) * (end + 1)))
        for first in range(0, n_senders, per_pass):
            passes.append(
                (
                    prompts,
                    in_group,
                    start,
                    end,
                    list(range(first, min(first + per_pass, n_senders))),
                )
            )

    for prompts, in_group, start, end, chunk in tqdm(
        passes, desc="path patching, step 2", disable=not progress, unit="pass"
    ):
        n_variants, n_group = len(chunk), len(prompts)
        local = torch.full((runs.n_prompts,), -1)
        local[prompts] = torch.arange(n_group)
        group_pairs = torch.nonzero(in_group)[:, 0]
        target_row = (
            torch.arange(n_variants)[:, None] * n_group + local[pair_prompt[group_pairs]][None]
        ).reshape(-1)
        target_position = (pair_position[group_pairs] - start).repeat(n_variants)
        absolute_position = pair_position[group_pairs].repeat(n_variants)

        def receiver_hook(
            name: str,
            chunk=chunk,
            group_pairs=group_pairs,
            target_row=target_row,
            target_position=target_position,
            absolute_position=absolute_position,
        ):
            targets = [r for r in receivers if r.hook_name == name]
            values = torch.stack([recorded[name][i][group_pairs] for i in chunk])
            values = values.reshape(-1, *values.shape[2:])  # [variants x pairs, heads, d]

            def hook(activation, hook):  # [rows, positions, heads, d_head]
                activation = activation.clone()
                for receiver in targets:
                    keep = slice(None)
                    if receiver.position is not None:
                        keep = absolute_position == receiver.position
                    activation[target_row[keep], target_position[keep], receiver.index] = values[
                        keep, receiver.index
                    ].to(activation.dtype)
                return activation

            return hook

        names = sorted({r.hook_name for r in receivers})
        hooks = [(name, receiver_hook(name)) for name in names]
        tokens = runs.base_tokens[prompts, start : end + 1].repeat(n_variants, 1)
        skip = contextlib.nullcontext()
        if receiver_start > 0:
            resid = base[f"blocks.{receiver_start}.hook_resid_pre"][prompts, start : end + 1]
            skip = start_at_layer(bridge, receiver_start, resid.repeat(n_variants, 1, 1))
        cache = prefix_cache.prefix(start, n_variants, prompts, receiver_start) if start else None
        read_in_pass = (read[prompts] - start).repeat(n_variants)
        with skip, with_hooks(bridge, hooks):
            logits = logits_at(loaded, tokens, read_in_pass, None, cache)
        per_row = metric(logits, prompts.repeat(n_variants))
        result[torch.tensor(chunk)[:, None], prompts[None]] = per_row.double().view(
            n_variants, n_group
        )
    return result


@torch.no_grad()
def path_patching(
    loaded: LoadedModel,
    runs: PatchingRuns,
    senders: Sequence[Component],
    receivers: Sequence[Component] | None,
    metric: Metric,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = True,
    per_prompt: bool = False,
    positions: str = "all",
    cached: RunCache | None = None,
) -> pd.DataFrame:
    """Effect of each sender head that reaches the metric only through ``receivers``.

    The method of the module docstring (Wang et al. 2022, Appendix B; Merullo et al.
    2023): :func:`plan_path_patching`, then :func:`step_one` and, with receivers,
    :func:`step_two`.

    Args:
        loaded: A LoadedModel with a bridge.
        runs: Base/source tokens and read positions (Merullo et al. patch corrupt into
            clean: base = clean, source = corrupt).
        senders: ``head`` components, optionally at one position.
        receivers: ``q``, ``k`` or ``v`` components, optionally at one position; None
            for the final residual stream. Under grouped-query attention a ``k``/``v``
            receiver addresses a K/V head, and replacing it changes every query head of
            that group (see :mod:`circuit_repro.engine.hooks`).
        metric: Per-row metric, see :mod:`circuit_repro.engine.metrics`.
        token_budget: Maximum rows x positions per forward pass.
        progress: Show progress bars.
        per_prompt: Also return each prompt's value (column ``per_prompt``).
        positions: ``"all"``: senders patched and receivers put back at every position
            (Wang et al. 2022). ``"read"``: at each prompt's read position only, as
            Merullo et al.'s code does (position -1); other heads are then frozen there
            alone, which is the same thing, since a patch at the last position cannot
            reach earlier ones. Into the final residual stream (``receivers=None``) the
            two agree exactly: a sender's output at earlier positions reaches the read
            position only through other heads, which are frozen.
        cached: :func:`cache_runs` of ``runs``, shared by several calls.

    Returns:
        One row per sender: ``kind, layer, index, position, value, metric, direction``
        (and ``per_prompt``, each prompt's value, if asked).
    """
    plan = plan_path_patching(loaded, runs, senders, receivers, token_budget, positions, cached)
    first = step_one(loaded, plan, metric, progress)
    per_row_values = first if receivers is None else step_two(loaded, plan, first, metric, progress)
    values = per_row_values.mean(dim=1)
    table = result_table(senders, values, metric, runs.direction)
    if per_prompt:
        table["per_prompt"] = list(per_row_values.numpy())
    return table


@torch.no_grad()
def naive_path_patching(
    loaded: LoadedModel,
    runs: PatchingRuns,
    sender: Component,
    receivers: Sequence[Component] | None,
    metric: Metric,
    positions: str = "all",
) -> float:
    """Path patching by hand, the reference for :func:`path_patching` (one sender).

    Full forward passes over every position, with every head's output explicitly frozen
    to the base run except the sender's (taken from the source run); step 2 puts the
    receivers' recorded inputs back into an ordinary base run. Nothing is skipped or
    cached, so it costs four full forwards per sender: for tests and spot checks.

    With ``positions="read"`` the sender is patched and the receivers put back at each
    prompt's read position only (a component's own ``position`` is then ignored).

    Returns:
        The metric averaged over prompts.
    """
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
    bridge = loaded.bridge
    rows = torch.arange(runs.n_prompts)

    def sites(component: Component) -> tuple:
        """Index of the component's (prompt, position, head) entries that are patched."""
        if positions == "read":
            return rows, runs.read_positions, component.index
        at = slice(None) if component.position is None else component.position
        return slice(None), at, component.index

    n_layers = bridge.cfg.n_layers
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    _, base = bridge.run_with_cache(runs.base_tokens)
    _, source = bridge.run_with_cache(runs.source_tokens)

    # Hook callbacks close over the names: the bridge may report a canonical alias.
    def freeze(name):
        def hook(z, hook):
            frozen = base[name].clone()
            if name == sender.hook_name:
                frozen[sites(sender)] = source[name][sites(sender)]
            return frozen

        return hook

    step_one = {}

    def record(name):
        def hook(activation, hook):
            step_one[name] = activation.detach().clone()

        return hook

    receiver_names = sorted({r.hook_name for r in receivers or []})
    with bridge.hooks(
        fwd_hooks=[(name, freeze(name)) for name in z_names]
        + [(name, record(name)) for name in receiver_names]
    ):
        logits = bridge(runs.base_tokens)
    if receivers is not None:

        def put_back(name):
            def hook(activation, hook):
                activation = activation.clone()
                for receiver in receivers:
                    if receiver.hook_name == name:
                        activation[sites(receiver)] = step_one[name][sites(receiver)]
                return activation

            return hook

        with bridge.hooks(fwd_hooks=[(name, put_back(name)) for name in receiver_names]):
            logits = bridge(runs.base_tokens)
    return metric(logits[rows, runs.read_positions], rows).mean().item()
