# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""Activation patching, batched and restarted at the patched layer.

Activation patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022) runs the
model on a *base* input while replacing one component's activation with its value on
a *source* input, and measures how a metric moves. Patching clean activations into
a corrupted run asks "which components are sufficient to restore the behaviour?";
patching corrupted activations into the clean run asks "which are necessary?". Every
table this module writes records its direction in the ``direction`` column.

Two implementations give the same numbers:

- :func:`naive_patching_sweep`: one full forward pass per component (the reference,
  like TransformerLens's ``patching.py``).
- :func:`patching_sweep`: the fast path (DESIGN.md, "Performance model"), built on
  :mod:`circuit_repro.engine.forward`:

  1. *Variants on the batch axis.* Many components are patched in one forward pass:
     the base prompts are repeated once per component and each copy patches its own
     component (:mod:`circuit_repro.engine.hooks`, stacked variants).
  2. *Start at the patched layer.* Blocks before a component's layer compute exactly
     what the unpatched base run computed, so they are replaced by pass-throughs
     and the cached residual stream enters the first patched block.
  3. *Logits only where the metric reads them.* The final hidden state is taken at
     each prompt's answer position and only those rows are unembedded.
  4. *Positions before the patch are reused.* Attention is causal, so a patch at
     position ``p`` leaves every earlier position unchanged in every layer; the
     patched run computes positions ``p ..`` only, reading earlier keys and values
     from the base run's cache. (Checked once per model against a full run, and not
     used where it does not reproduce it.)
  5. *No-op patches are not run.* Patching a component can change the metric only at
     positions where its source and base activations differ, and only at or before
     the read position (attention is causal). So a one-position component whose two
     values are bitwise equal there, in every prompt, is skipped, and its row gets the
     unpatched base run's value (column ``skipped``); an all-positions component starts
     its run at the first position where they differ. Before the first token where the
     two prompts differ every activation is equal (the first 9 of the 15 tokens of the
     benchmark's IOI prompts), and so is the embedding at any later position holding
     the same token in both. Equality is tested exactly, on the cached activations, so
     the rule cannot change a number: a skipped row equals a full forward pass with
     the patch (the tests check it against :func:`naive_patching_sweep`).

:mod:`circuit_repro.engine.path_patching` measures the effect of a sender head that
flows only through given receivers (Wang et al. 2022, Merullo et al. 2023), using the
same machinery.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from circuit_repro.engine.forward import (
    PrefixCache,
    gather_rows,
    logits_at,
    prefix_reuse_supported,
    start_at_layer,
)
from circuit_repro.engine.hooks import Component, cache_activations, patch
from circuit_repro.engine.memory import run_halving_on_oom
from circuit_repro.engine.metrics import Metric, metric_name, normalized_effect

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel
    from circuit_repro.tasks.records import TaskRecord

# Upper bound on tokens (rows x positions) per forward pass of the fast path; keeps
# activations of a 135M model under ~1 GB on CPU. Raise it on a GPU.
DEFAULT_TOKEN_BUDGET = 16384


@dataclass
class PatchingRuns:
    """The two inputs of a patching experiment and where the metric reads.

    Attributes:
        base_tokens: ``[n_prompts, pos]`` tokens of the run being patched.
        source_tokens: ``[n_prompts, pos]`` tokens whose activations are patched in
            (same length as ``base_tokens``: roles align position by position).
        read_positions: ``[n_prompts]`` position of each prompt's answer prediction.
        attention_mask: Optional ``[n_prompts, pos]`` mask (1 = real token). Right
            padding never affects the read positions (attention is causal).
        direction: Free text recorded in every output row, e.g.
            ``"clean -> corrupt"`` (source -> base).
    """

    base_tokens: Int[torch.Tensor, "prompt pos"]
    source_tokens: Int[torch.Tensor, "prompt pos"]
    read_positions: Int[torch.Tensor, " prompt"]
    attention_mask: Int[torch.Tensor, "prompt pos"] | None = None
    direction: str = "source -> base"

    def __post_init__(self) -> None:
        if self.base_tokens.shape != self.source_tokens.shape:
            raise ValueError(
                f"base and source tokens differ in shape ({tuple(self.base_tokens.shape)} vs "
                f"{tuple(self.source_tokens.shape)}); patching needs aligned prompts"
            )
        self.read_positions = torch.as_tensor(self.read_positions, dtype=torch.long)

    @property
    def n_prompts(self) -> int:
        return self.base_tokens.shape[0]

    def to(self, device: str | torch.device) -> PatchingRuns:
        """The same runs with their tensors on ``device`` (the model's)."""
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return PatchingRuns(
            self.base_tokens.to(device),
            self.source_tokens.to(device),
            self.read_positions.to(device),
            mask,
            self.direction,
        )

    def mask_rows(self, rows: slice) -> Int[torch.Tensor, "prompt pos"] | None:
        """The attention mask of prompts ``rows`` (None when there is none)."""
        return None if self.attention_mask is None else self.attention_mask[rows]


def runs_from_records(
    tokenizer,
    records: Sequence[TaskRecord],
    counterfactual: str = "flipped",
    direction: str = "clean -> corrupt",
) -> tuple[PatchingRuns, Metric]:
    """Patching runs and a logit-difference metric from task records.

    Args:
        tokenizer: The model's tokenizer (right padding).
        records: Typed task records (:class:`circuit_repro.tasks.records.TaskRecord`).
        counterfactual: Which counterfactual prompt is the corrupted run.
        direction: ``"clean -> corrupt"`` patches clean activations into the corrupted
            run (does the component restore the behaviour?); ``"corrupt -> clean"``
            patches corrupted activations into the clean run (is it needed?).

    Returns:
        ``(runs, metric)``: the metric is LD = logit(answer) - logit(wrong_answer) of the
        clean prompt, whichever run is the base.
    """
    from circuit_repro.engine.metrics import LogitDiffMetric
    from circuit_repro.tasks.base import single_token_id

    prompts = [r.prompt for r in records]
    counterfactuals = [r.counterfactual(counterfactual).prompt for r in records]
    # One padded batch, so that clean and corrupted tokens have the same length.
    batch = tokenizer(prompts + counterfactuals, return_tensors="pt", padding=True)
    lengths = batch.attention_mask.sum(dim=1)
    misaligned = [r.id for i, r in enumerate(records) if lengths[i] != lengths[len(records) + i]]
    if misaligned:
        raise ValueError(
            f"records {misaligned[:5]} tokenize to different lengths than their "
            f"{counterfactual!r} counterfactual; patching needs position-aligned prompts"
        )
    clean, corrupt = batch.input_ids[: len(records)], batch.input_ids[len(records) :]
    if direction == "clean -> corrupt":
        base, source = corrupt, clean
    elif direction == "corrupt -> clean":
        base, source = clean, corrupt
    else:
        raise ValueError(
            f"direction must be 'clean -> corrupt' or 'corrupt -> clean', not {direction!r}"
        )
    runs = PatchingRuns(
        base_tokens=base,
        source_tokens=source,
        read_positions=torch.tensor([r.end for r in records]),
        direction=direction,
    )
    metric = LogitDiffMetric(
        torch.tensor([single_token_id(tokenizer, r.answer) for r in records]),
        torch.tensor([single_token_id(tokenizer, r.wrong_answer) for r in records]),
    )
    return runs, metric


def add_normalized_effect(
    table: pd.DataFrame, base_value: float, source_value: float
) -> pd.DataFrame:
    """Add ``normalized_effect = (value - base) / (source - base)`` to a sweep table.

    ``base_value`` and ``source_value`` are the metric on the unpatched base and source
    runs (:func:`run_metric`); see :func:`circuit_repro.engine.metrics.normalized_effect`.
    Patching clean into corrupt, 1 means the component alone restores the clean
    behaviour and 0 means no effect (PAPERS.md, "Common vocabulary"); patching corrupt
    into clean, 1 means the patch fully breaks the behaviour. The formula is the same;
    the ``direction`` column says which reading applies.
    """
    table = table.copy()
    table["normalized_effect"] = normalized_effect(table["value"], base_value, source_value)
    table["base_value"] = base_value
    table["source_value"] = source_value
    return table


def prompt_metric(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    runs: PatchingRuns,
    metric: Metric,
    rows: slice = slice(None),
    token_ids: Int[torch.Tensor, "prompt k"] | None = None,
) -> Float[torch.Tensor, " prompt"]:
    """Per-prompt metric of a forward pass on ``tokens`` (prompts ``rows`` of ``runs``).

    The pass runs with whatever hooks are installed: unpatched, or under an
    intervention (ablations, probes for gradients). With ``token_ids`` the metric
    receives only those logits (see :func:`patching_sweep`).
    """
    ids = None if token_ids is None else token_ids[rows]
    logits = logits_at(
        loaded, tokens, runs.read_positions[rows], runs.mask_rows(rows), token_ids=ids
    )
    return metric(logits, torch.arange(runs.n_prompts)[rows])


@torch.no_grad()
def run_metric(
    loaded: LoadedModel, tokens: Int[torch.Tensor, "prompt pos"], runs: PatchingRuns, metric: Metric
) -> float:
    """The metric (averaged over prompts) of an unpatched run on ``tokens``."""
    return prompt_metric(loaded, tokens, runs, metric).double().mean().item()


# ---------------------------------------------------------------- activation patching


def shared_prefix_length(runs: PatchingRuns) -> int:
    """Number of leading positions at which every prompt's source and base tokens agree.

    Attention is causal, so at these positions every activation of the source run
    equals the base run's: patching them is a no-op, and an all-positions patch only
    needs to compute the positions from here on (Wang et al. 2022's IOI prompts, for
    instance, first differ at the second mention of the subject).
    """
    differs = runs.base_tokens != runs.source_tokens
    if runs.attention_mask is not None:
        differs = differs & runs.attention_mask.bool()
    differs = differs.any(dim=0)  # [pos]
    return int(differs.int().argmax()) if bool(differs.any()) else differs.shape[0]


def _needed_hooks(components: Sequence[Component]) -> list[str]:
    return sorted({c.hook_name for c in components})


def _start_layer(component: Component) -> int:
    return component.layer


def result_table(
    components: Sequence[Component],
    values: Float[torch.Tensor, " component"],
    metric: Metric,
    direction: str,
) -> pd.DataFrame:
    """A sweep's table: ``kind, layer, index, position, value, metric, direction``."""
    table = pd.DataFrame([c.label() for c in components])
    table["value"] = values.double().cpu().numpy()
    table["metric"] = metric_name(metric)
    table["direction"] = direction
    return table


@torch.no_grad()
def naive_patching_sweep(
    loaded: LoadedModel,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    progress: bool = False,
) -> pd.DataFrame:
    """One ordinary full forward pass per component (the reference implementation).

    Independent of the fast path's machinery: the bridge's own forward computes the
    logits at every position, and the read positions are taken from them.

    Returns:
        One row per component: ``kind, layer, index, position, value, metric,
        direction``, where ``value`` is the metric averaged over prompts.
    """
    with cache_activations(loaded.bridge, _needed_hooks(components)) as source:
        loaded.bridge(runs.source_tokens, attention_mask=runs.attention_mask)
    prompt_index = torch.arange(runs.n_prompts)
    values = []
    for component in tqdm(components, desc="naive patching", disable=not progress):
        with patch(loaded.bridge, [component], source):
            logits = loaded.bridge(runs.base_tokens, attention_mask=runs.attention_mask)
            logits = gather_rows(logits, runs.read_positions)  # [prompts, vocab]
        values.append(metric(logits, prompt_index).double().mean())
    return result_table(components, torch.stack(values), metric, runs.direction)


def _differs_by_position(
    source: Float[torch.Tensor, "prompt pos ..."],
    base: Float[torch.Tensor, "prompt pos ..."],
    read_positions: Int[torch.Tensor, " prompt"],
) -> torch.Tensor:
    """``[prompt, pos]``: whether the two activations differ anywhere at that position,
    counting only positions at or before the prompt's read position (attention is
    causal, so a later position cannot reach the metric)."""
    differs = source != base
    if differs.dim() > 2:
        differs = differs.flatten(2).any(dim=-1)
    positions = torch.arange(differs.shape[1], device=differs.device)
    return differs & (positions[None] <= read_positions.to(differs.device)[:, None])


def first_effective_positions(
    components: Sequence[Component],
    source: dict[str, torch.Tensor],
    base: dict[str, torch.Tensor],
    read_positions: Int[torch.Tensor, " prompt"],
) -> list[int | None]:
    """Per component, the first position where patching it can change the metric.

    That is the first position (the component's own, for a one-position component) at
    which its source and base activations differ in some prompt, at or before that
    prompt's read position; None when there is none: the patch writes the values the
    base run already has, wherever the metric can see them, so it is a no-op. Equality
    is exact (bitwise), so a skipped patch is exactly the unpatched run.
    """
    differs: dict[tuple[str, int | None], torch.Tensor] = {}
    firsts: list[int | None] = []
    for component in components:
        key = (component.hook_name, component.index)
        if key not in differs:
            src, bas = source[component.hook_name], base[component.hook_name]
            if component.kind == "pattern":  # [batch, head, query_pos, key_pos]
                src, bas = src[:, component.index], bas[:, component.index]
            elif component.index is not None:
                src, bas = src[:, :, component.index], bas[:, :, component.index]
            differs[key] = _differs_by_position(src, bas, read_positions).any(dim=0)  # [pos]
        at = differs[key]
        if component.position is not None:
            firsts.append(component.position if bool(at[component.position]) else None)
        else:
            firsts.append(int(at.int().argmax()) if bool(at.any()) else None)
    return firsts


@torch.no_grad()
def patching_sweep(
    loaded: LoadedModel,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = True,
    per_prompt: bool = False,
    token_ids: Int[torch.Tensor, "prompt k"] | None = None,
) -> pd.DataFrame:
    """Patch each component (source -> base) and measure ``metric``; the fast path.

    A patch that cannot change anything is not run (see
    :func:`first_effective_positions`): its row gets the unpatched base run's value.

    Args:
        loaded: A :class:`circuit_repro.models.LoadedModel` with a bridge.
        runs: Base/source tokens and read positions.
        components: Components to patch, one at a time (any mix of kinds).
        metric: Per-row metric, see :mod:`circuit_repro.engine.metrics`.
        token_budget: Maximum rows x positions per forward pass.
        progress: Show a progress bar.
        per_prompt: Also return each prompt's value (column ``per_prompt``).
        token_ids: ``[n_prompts, k]`` tokens whose logits the metric reads: only those
            are computed and the metric gets ``[rows, k]`` logits (e.g. a logit
            difference with answer column 0 and wrong column 1). Saves unembedding
            the whole vocabulary, most of a short run's cost with a large vocabulary.

    Returns:
        One row per component (input order): ``kind, layer, index, position, value,
        metric, direction``; ``value`` is the metric averaged over prompts. Column
        ``skipped`` marks the no-op patches, ``first_position`` is the first position
        each other patch's run computed; ``table.attrs["passes"]`` lists the forward
        passes as ``(start_layer, start_position, n_patches)``.
    """
    bridge, n_prompts, seq = loaded.bridge, runs.n_prompts, runs.base_tokens.shape[1]
    component_hooks = _needed_hooks(components)
    start_layers = sorted({_start_layer(c) for c in components})
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in start_layers if layer > 0]
    with cache_activations(bridge, component_hooks) as source:
        bridge(runs.source_tokens, attention_mask=runs.attention_mask)
    with cache_activations(bridge, sorted(set(component_hooks) | set(resid_names))) as base:
        base_per_prompt = prompt_metric(
            loaded, runs.base_tokens, runs, metric, token_ids=token_ids
        ).double()
    firsts = first_effective_positions(components, source, base, runs.read_positions)
    for name in set(component_hooks) - set(resid_names):
        del base[name]  # only the residual streams entering start layers are read below
    values = torch.full((len(components),), base_per_prompt.mean().item(), dtype=torch.float64)
    prompt_values = [base_per_prompt.cpu().numpy()] * len(components)
    effective = [i for i, first in enumerate(firsts) if first is not None]

    # A chunk's suffix may start at its earliest patched position, but never after a
    # read position (the metric must be computed in the suffix).
    latest_start = int(runs.read_positions.min())

    def wanted_start(i: int) -> int:
        return min(firsts[i], latest_start)

    reuse_prefix = any(wanted_start(i) > 0 for i in effective) and prefix_reuse_supported(
        loaded, runs.base_tokens, runs.read_positions
    )
    prefix_cache = PrefixCache(loaded, runs.base_tokens) if reuse_prefix else None
    starts = {i: wanted_start(i) if reuse_prefix else 0 for i in effective}

    chunks = _chunks_by_layer_and_position(
        [components[i] for i in effective],
        [starts[i] for i in effective],
        n_prompts,
        seq,
        token_budget,
    )
    passes = []

    def run_pass(layer: int, start: int, chunk: Sequence[int]) -> None:
        n_variants = len(chunk)
        tokens = runs.base_tokens[:, start:].repeat(n_variants, 1)
        mask = None
        if runs.attention_mask is not None and start == 0:
            mask = runs.attention_mask.repeat(n_variants, 1)
        read = (runs.read_positions - start).repeat(n_variants)
        resid = base.get(f"blocks.{layer}.hook_resid_pre")
        resid = None if resid is None else resid[:, start:].repeat(n_variants, 1, 1)
        cache = prefix_cache.prefix(start, n_variants, first_layer=layer) if start else None
        plan = {v: [components[i]] for v, i in enumerate(chunk)}
        with (
            start_at_layer(bridge, layer, resid),
            patch(bridge, plan, source, n_prompts, first_position=start),
        ):
            ids = None if token_ids is None else token_ids.repeat(n_variants, 1)
            logits = logits_at(loaded, tokens, read, mask, cache, token_ids=ids)
        per_row = metric(logits, torch.arange(n_prompts).repeat(n_variants))
        per_row = per_row.double().view(n_variants, n_prompts)
        for v, i in enumerate(chunk):
            values[i] = per_row[v].mean()
            prompt_values[i] = per_row[v].cpu().numpy()
        passes.append((layer, start, n_variants))

    for layer, start, members in tqdm(chunks, desc="patching", disable=not progress, unit="pass"):
        chunk = [effective[m] for m in members]
        # A pass that runs out of memory is split in two (the patches are independent).
        run_halving_on_oom(functools.partial(run_pass, layer, start), chunk, what="patches")
    table = result_table(components, values, metric, runs.direction)
    table["skipped"] = [first is None for first in firsts]
    # The first position each patch had to compute (None: skipped), and the passes that
    # ran (start layer, start position, patches): what the benchmark counts FLOPs from.
    table["first_position"] = [starts.get(i) for i in range(len(components))]
    table.attrs["passes"] = passes
    if per_prompt:
        table["per_prompt"] = prompt_values
    return table


def _chunks_by_layer_and_position(
    components: Sequence[Component],
    first_positions: Sequence[int],
    n_prompts: int,
    seq: int,
    token_budget: int,
) -> list[tuple[int, int, list[int]]]:
    """Group component indices into forward passes: ``(start_layer, start_position,
    indices)``.

    Components are sorted by layer and first position (``first_positions[i]``, the
    first position component ``i``'s run must compute). A pass starts at the earliest
    position of its members, so a member whose own first position is later computes
    positions it did not need; members are therefore only grouped when their first
    positions lie within ``seq // 8`` of the pass's start, and as many as the token
    budget allows.
    """
    window = max(1, seq // 8)
    order = sorted(
        range(len(components)),
        key=lambda i: (_start_layer(components[i]), first_positions[i]),
    )
    chunks: list[tuple[int, int, list[int]]] = []
    for i in order:
        layer, start = _start_layer(components[i]), first_positions[i]
        if chunks and chunks[-1][0] == layer:
            _, chunk_start, members = chunks[-1]
            fits = (len(members) + 1) * n_prompts * (seq - chunk_start) <= token_budget
            if fits and start - chunk_start <= window:
                members.append(i)
                continue
        chunks.append((layer, start, [i]))
    return chunks
