"""Activation patching and path patching, batched and restarted at the patched layer.

Activation patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022) runs the
model on a *base* input while replacing one component's activation with its value on
a *source* input, and measures how a metric moves. Patching clean activations into
a corrupted run asks "which components are sufficient to restore the behaviour?";
patching corrupted activations into the clean run asks "which are necessary?". Every
table this module writes records its direction in the ``direction`` column.

Two implementations give the same numbers:

- :func:`naive_patching_sweep`: one full forward pass per component (the reference,
  like TransformerLens's ``patching.py``).
- :func:`patching_sweep`: the fast path (DESIGN.md, "Performance model"):

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

:func:`path_patching` measures the effect of a sender head that flows only through
given receivers (Wang et al. 2022, Merullo et al. 2023), using the same machinery.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_repro.engine.hooks import Component, cache_activations, patch, with_hooks

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

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

    base_tokens: torch.Tensor
    source_tokens: torch.Tensor
    read_positions: torch.Tensor
    attention_mask: torch.Tensor | None = None
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


def runs_from_records(
    tokenizer,
    records: Sequence[dict],
    counterfactual: str = "flipped",
    direction: str = "clean -> corrupt",
) -> tuple[PatchingRuns, Callable]:
    """Patching runs and a logit-difference metric from task records.

    Args:
        tokenizer: The model's tokenizer (right padding).
        records: Task records (``prompt``, ``answer``, ``wrong_answer``, ``roles.END``,
            ``counterfactuals[counterfactual].prompt``), see :mod:`circuit_repro.tasks`.
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

    prompts = [r["prompt"] for r in records]
    try:
        counterfactuals = [r["counterfactuals"][counterfactual]["prompt"] for r in records]
    except KeyError:
        raise ValueError(f"the records have no {counterfactual!r} counterfactual") from None
    # One padded batch, so that clean and corrupted tokens have the same length.
    batch = tokenizer(prompts + counterfactuals, return_tensors="pt", padding=True)
    lengths = batch.attention_mask.sum(dim=1)
    misaligned = [
        r.get("id", i) for i, r in enumerate(records) if lengths[i] != lengths[len(records) + i]
    ]
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
        read_positions=torch.tensor([r["roles"]["END"] for r in records]),
        direction=direction,
    )
    metric = LogitDiffMetric(
        torch.tensor([single_token_id(tokenizer, r["answer"]) for r in records]),
        torch.tensor([single_token_id(tokenizer, r["wrong_answer"]) for r in records]),
    )
    return runs, metric


def add_normalized_effect(
    table: pd.DataFrame, base_value: float, source_value: float
) -> pd.DataFrame:
    """Add ``normalized_effect = (value - base) / (source - base)`` to a sweep table.

    ``base_value`` and ``source_value`` are the metric on the unpatched base and source
    runs. Patching clean into corrupt, 1 means the component alone restores the clean
    behaviour and 0 means no effect (PAPERS.md, "Common vocabulary"); patching corrupt
    into clean, 1 means the patch fully breaks the behaviour. The formula is the same;
    the ``direction`` column says which reading applies.
    """
    table = table.copy()
    table["normalized_effect"] = (table["value"] - base_value) / (source_value - base_value)
    table["base_value"] = base_value
    table["source_value"] = source_value
    return table


@torch.no_grad()
def run_metric(loaded, tokens: torch.Tensor, runs: PatchingRuns, metric: Metric) -> float:
    """The metric (averaged over prompts) of an unpatched run on ``tokens``."""
    logits = final_logits_at(loaded, tokens, runs.read_positions, runs.attention_mask)
    return metric(logits, torch.arange(tokens.shape[0])).double().mean().item()


# ------------------------------------------------------------ running from a layer


class _PassThrough(torch.nn.Module):
    """Stands in for a skipped block: returns its input, or a given residual stream."""

    def __init__(self, replacement: torch.Tensor | None = None):
        super().__init__()
        self.replacement = replacement

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.replacement is None else self.replacement


@contextlib.contextmanager
def start_at_layer(bridge, layer: int, resid_pre: torch.Tensor | None) -> Iterator[None]:
    """Skip blocks ``0 .. layer-1``; ``resid_pre`` enters block ``layer`` instead.

    The embedding still runs (a table look-up) so that the model's own forward builds
    its masks and rotary embeddings as usual; the skipped blocks cost nothing.
    """
    if layer == 0:
        yield
        return
    if resid_pre is None:
        raise ValueError("starting after layer 0 needs the residual stream entering it")
    blocks = bridge.blocks  # the HF model's own ModuleList, shared by the bridge
    originals = [blocks[i] for i in range(layer)]
    try:
        for i in range(layer):
            blocks[i] = _PassThrough(resid_pre if i == layer - 1 else None)
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


@contextlib.contextmanager
def _attention_reads_cache(bridge) -> Iterator[None]:
    """Let the bridge's attention see the key/value cache under its current name.

    transformers 5 passes the cache to attention modules as ``cache=``, while
    TransformerLens 4.3's attention bridges look for ``past_key_values`` and would
    silently ignore it; this forwards the new name for the duration of the block.
    """
    shimmed = []
    for module in bridge.modules():
        update = getattr(type(module), "_update_kv_cache", None)
        if update is None:
            continue

        def forward_cache_name(k, v, _module=module, _update=update, **kwargs):
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return _update(_module, k, v, **kwargs)

        module._update_kv_cache = forward_cache_name
        shimmed.append(module)
    try:
        yield
    finally:
        for module in shimmed:
            del module._update_kv_cache


def _cache_keyword(hf_model) -> str:
    parameters = inspect.signature(hf_model.base_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class PrefixCache:
    """Keys and values of a run, so that patched runs can compute only a suffix."""

    def __init__(self, loaded, tokens: torch.Tensor):
        from transformers import DynamicCache

        self.loaded = loaded
        cache = DynamicCache()
        with torch.no_grad(), _attention_reads_cache(loaded.bridge):
            loaded.hf_model.base_model(
                input_ids=tokens, use_cache=True, **{_cache_keyword(loaded.hf_model): cache}
            )
        self.keys_values = [(layer.keys, layer.values) for layer in cache.layers]

    def prefix(self, length: int, n_variants: int, prompts: torch.Tensor | None = None):
        """A fresh cache holding positions ``0 .. length-1`` of ``prompts`` (all: None),
        repeated per variant."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (keys, values) in enumerate(self.keys_values):
            if prompts is not None:
                keys, values = keys[prompts], values[prompts]
            cache.update(
                keys[:, :, :length].repeat(n_variants, 1, 1, 1),
                values[:, :, :length].repeat(n_variants, 1, 1, 1),
                layer,
            )
        return cache


def final_logits_at(
    loaded,
    tokens: torch.Tensor,
    read_positions: torch.Tensor,
    attention_mask=None,
    prefix_cache=None,
) -> torch.Tensor:
    """Logits at one position per row, ``[rows, vocab]``, unembedding only those rows.

    Runs the decoder (``hf_model.base_model``, which applies the final norm) with the
    bridge's hooks in place, gathers each row's hidden state at ``read_positions`` and
    applies the output embedding to those rows only. With ``prefix_cache`` (keys and
    values of earlier positions, see :class:`PrefixCache`), ``tokens`` are the suffix
    that follows them and ``read_positions`` count from the suffix's start.
    """
    hf_model = loaded.hf_model
    if prefix_cache is None:
        hidden = hf_model.base_model(
            input_ids=tokens, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state  # [rows, pos, d_model]
    else:
        with _attention_reads_cache(loaded.bridge):
            hidden = hf_model.base_model(
                input_ids=tokens, use_cache=True, **{_cache_keyword(hf_model): prefix_cache}
            ).last_hidden_state  # [rows, suffix_pos, d_model]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, read_positions.to(hidden.device)][:, None]  # [rows, 1, d_model]
    logits = hf_model.get_output_embeddings()(last)[:, 0]
    softcap = getattr(hf_model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


_PREFIX_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Prompts run (twice) by the prefix-reuse check.
PREFIX_CHECK_PROMPTS = 4


@torch.no_grad()
def prefix_reuse_supported(loaded, tokens: torch.Tensor, read_positions: torch.Tensor) -> bool:
    """Whether computing a suffix from cached keys/values reproduces a full run here.

    Checked once per model and prompt length (on a few prompts), again for longer
    prompts: some architectures or library versions keep state that a suffix run cannot
    see (an attention implementation that ignores the cache, a sliding window that a
    longer prompt crosses).
    """
    supported, checked_length = _PREFIX_SUPPORT.get(loaded.bridge, (True, 0))
    if supported and tokens.shape[1] > checked_length:
        tokens, read_positions = (
            tokens[:PREFIX_CHECK_PROMPTS],
            read_positions[:PREFIX_CHECK_PROMPTS],
        )
        split = max(1, int(read_positions.min()) // 2)
        full = final_logits_at(loaded, tokens, read_positions)
        try:
            cache = PrefixCache(loaded, tokens).prefix(split, 1)
            suffix = final_logits_at(loaded, tokens[:, split:], read_positions - split, None, cache)
            supported = bool((suffix - full).abs().max() < 1e-4 * max(1.0, full.abs().max()))
        except Exception:  # noqa: BLE001 - any failure means: do not reuse prefixes
            supported = False
        _PREFIX_SUPPORT[loaded.bridge] = (supported, tokens.shape[1])
    return supported


def _full_logits_at(loaded, tokens, read_positions, attention_mask=None) -> torch.Tensor:
    """Reference path: the bridge's ordinary forward, full logits, then read rows."""
    logits = loaded.bridge(tokens, attention_mask=attention_mask)  # [rows, pos, vocab]
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, read_positions.to(logits.device)]


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


def _result_table(
    components: Sequence[Component], values: torch.Tensor, metric: Metric, direction: str
) -> pd.DataFrame:
    table = pd.DataFrame([c.label() for c in components])
    table["value"] = values.double().cpu().numpy()
    table["metric"] = getattr(metric, "name", type(metric).__name__)
    table["direction"] = direction
    return table


@torch.no_grad()
def naive_patching_sweep(
    loaded,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    progress: bool = False,
) -> pd.DataFrame:
    """One ordinary full forward pass per component (the reference implementation).

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
            logits = _full_logits_at(
                loaded, runs.base_tokens, runs.read_positions, runs.attention_mask
            )
        values.append(metric(logits, prompt_index).mean())
    return _result_table(components, torch.stack(values), metric, runs.direction)


@torch.no_grad()
def patching_sweep(
    loaded,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = True,
    per_prompt: bool = False,
) -> pd.DataFrame:
    """Patch each component (source -> base) and measure ``metric``; the fast path.

    Args:
        loaded: A :class:`circuit_repro.models.LoadedModel` with a bridge.
        runs: Base/source tokens and read positions.
        components: Components to patch, one at a time (any mix of kinds).
        metric: Per-row metric, see :mod:`circuit_repro.engine.metrics`.
        token_budget: Maximum rows x positions per forward pass.
        progress: Show a progress bar.
        per_prompt: Also return each prompt's value (column ``per_prompt``).

    Returns:
        One row per component (input order): ``kind, layer, index, position, value,
        metric, direction``; ``value`` is the metric averaged over prompts.
    """
    bridge, n_prompts, seq = loaded.bridge, runs.n_prompts, runs.base_tokens.shape[1]
    start_layers = sorted({_start_layer(c) for c in components})
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in start_layers if layer > 0]
    with cache_activations(bridge, _needed_hooks(components)) as source:
        bridge(runs.source_tokens, attention_mask=runs.attention_mask)
    with cache_activations(bridge, resid_names) as base:
        bridge(runs.base_tokens, attention_mask=runs.attention_mask)

    # A chunk's suffix may start at its earliest patched position, but never after a
    # read position (the metric must be computed in the suffix). An all-positions patch
    # changes nothing before the first token where source and base differ.
    latest_start = int(runs.read_positions.min())
    shared = shared_prefix_length(runs)

    def wanted_start(component: Component) -> int:
        position = shared if component.position is None else component.position
        return min(position, latest_start)

    reuse_prefix = any(wanted_start(c) > 0 for c in components) and prefix_reuse_supported(
        loaded, runs.base_tokens, runs.read_positions
    )
    prefix_cache = PrefixCache(loaded, runs.base_tokens) if reuse_prefix else None

    def first_position(component: Component) -> int:
        return wanted_start(component) if reuse_prefix else 0

    chunks = _chunks_by_layer_and_position(components, first_position, n_prompts, seq, token_budget)
    values = torch.empty(len(components), dtype=torch.float64)
    prompt_values = [None] * len(components)
    for layer, start, chunk in tqdm(chunks, desc="patching", disable=not progress, unit="pass"):
        n_variants = len(chunk)
        tokens = runs.base_tokens[:, start:].repeat(n_variants, 1)
        mask = None
        if runs.attention_mask is not None and start == 0:
            mask = runs.attention_mask.repeat(n_variants, 1)
        read = (runs.read_positions - start).repeat(n_variants)
        resid = base.get(f"blocks.{layer}.hook_resid_pre")
        resid = None if resid is None else resid[:, start:].repeat(n_variants, 1, 1)
        cache = prefix_cache.prefix(start, n_variants) if start else None
        plan = {v: [components[i]] for v, i in enumerate(chunk)}
        with (
            start_at_layer(bridge, layer, resid),
            patch(bridge, plan, source, n_prompts, first_position=start),
        ):
            logits = final_logits_at(loaded, tokens, read, mask, cache)
        per_row = metric(logits, torch.arange(n_prompts).repeat(n_variants))
        per_row = per_row.double().view(n_variants, n_prompts)
        for v, i in enumerate(chunk):
            values[i] = per_row[v].mean()
            prompt_values[i] = per_row[v].cpu().numpy()
    table = _result_table(components, values, metric, runs.direction)
    if per_prompt:
        table["per_prompt"] = prompt_values
    return table


def _chunks_by_layer_and_position(
    components: Sequence[Component],
    first_position: Callable[[Component], int],
    n_prompts: int,
    seq: int,
    token_budget: int,
) -> list[tuple[int, int, list[int]]]:
    """Group component indices into forward passes: ``(start_layer, start_position,
    indices)``.

    Components are sorted by layer and first position. A pass starts at the earliest
    position of its members, so a member whose own first position is later computes
    positions it did not need; members are therefore only grouped when their first
    positions lie within ``seq // 8`` of the pass's start, and as many as the token
    budget allows.
    """
    window = max(1, seq // 8)
    order = sorted(
        range(len(components)),
        key=lambda i: (_start_layer(components[i]), first_position(components[i])),
    )
    chunks: list[tuple[int, int, list[int]]] = []
    for i in order:
        layer, start = _start_layer(components[i]), first_position(components[i])
        if chunks and chunks[-1][0] == layer:
            _, chunk_start, members = chunks[-1]
            fits = (len(members) + 1) * n_prompts * (seq - chunk_start) <= token_budget
            if fits and start - chunk_start <= window:
                members.append(i)
                continue
        chunks.append((layer, start, [i]))
    return chunks


# ------------------------------------------------------------------- path patching


@torch.no_grad()
def path_patching(
    loaded,
    runs: PatchingRuns,
    senders: Sequence[Component],
    receivers: Sequence[Component] | None,
    metric: Metric,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: bool = True,
    per_prompt: bool = False,
) -> pd.DataFrame:
    """Effect of each sender head that reaches the metric only through ``receivers``.

    For each sender (a ``head`` component, optionally at one position), following
    Wang et al. 2022 (Appendix B) as used by Merullo et al. 2023:

    1. Run the *base* input (e.g. clean) with the sender's output taken from the
       *source* run (e.g. corrupt) and every other head's output frozen to its base
       value; MLPs recompute. Record the receivers' inputs (their q, k or v).
    2. Run the base input again with only the receivers' q/k/v set to the values
       recorded in step 1, and measure the metric.

    With ``receivers=None`` the receiver is the final residual stream: the metric of
    step 1 itself (the sender's direct effect plus the MLPs it feeds).

    Under grouped-query attention a ``k``/``v`` receiver addresses a K/V head, and
    replacing it changes every query head of that group (see :mod:`circuit_repro.engine.hooks`).

    Only what can differ from the base run is computed. In step 1 every head is frozen
    and MLPs and norms act position by position, so each (prompt, position) is an
    independent one-token row: the rows from the prompt's first token that differs
    between source and base up to its read position (just the read position into the
    final residual stream). Step 1 starts at the sender's layer and stops after the last
    receiver's. Step 2 starts at the first receiver's layer and computes positions from
    the first differing token on, reading earlier keys and values from the base run's
    cache.

    Returns:
        One row per sender: ``kind, layer, index, position, value, metric, direction``
        (and ``per_prompt``, each prompt's value, if asked).
    """
    bridge, n_prompts = loaded.bridge, runs.n_prompts
    n_layers = bridge.cfg.n_layers
    for sender in senders:
        if sender.kind != "head":
            raise ValueError(f"senders must be heads, got {sender.kind!r}")
    for receiver in receivers or []:
        if receiver.kind not in ("q", "k", "v"):
            raise ValueError(
                f"receivers must be q, k or v of heads, got {receiver.kind!r}; use "
                "receivers=None for the final residual stream"
            )
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    receiver_names = sorted({r.hook_name for r in receivers or []})
    with cache_activations(bridge, z_names + resid_names + receiver_names) as base:
        bridge(runs.base_tokens, attention_mask=runs.attention_mask)
    with cache_activations(bridge, z_names) as source:
        bridge(runs.source_tokens, attention_mask=runs.attention_mask)

    # Step 1 rows: (prompt, position) pairs that can differ from the base run.
    read = runs.read_positions
    if receivers is None:
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

    def rows_of(activation: torch.Tensor) -> torch.Tensor:
        """``[n_pairs, 1, ...]``: the step-1 rows of a ``[n_prompts, pos, ...]`` activation."""
        return activation[pair_prompt, pair_position][:, None]

    prefix_cache = None
    if receivers is not None and prefix_reuse_supported(loaded, runs.base_tokens, read):
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
    per_row_values = torch.empty(len(senders), n_prompts, dtype=torch.float64)
    prompt_index = torch.arange(n_prompts)
    receiver_end = max((r.layer for r in receivers or []), default=n_layers - 1)
    # Step-1 values of the receivers' inputs, per sender: name -> [senders, pairs, ...].
    recorded: dict[str, list] = {name: [None] * len(senders) for name in receiver_names}

    def entering_rows(layer: int, n_variants: int):
        """Step 1 enters ``layer`` with the base residual stream of its rows."""
        resid = rows_of(base[f"blocks.{layer}.hook_resid_pre"]).repeat(n_variants, 1, 1)
        if layer > 0:
            return start_at_layer(bridge, layer, resid)
        # A row's token sits at index 0: replace its embedding (which would carry
        # position 0's learned position embedding) with the real one.
        return with_hooks(bridge, [("blocks.0.hook_resid_pre", lambda x, hook: resid)])

    desc = "path patching" if receivers is None else "path patching, step 1"
    for chunk in tqdm(chunks, desc=desc, disable=not progress, unit="pass"):
        n_variants = len(chunk)
        layer_of_chunk = senders[chunk[0]].layer

        # Step 1: sender from the source run, every other head frozen to the base run.
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
            for layer in range(layer_of_chunk, receiver_end + 1)
        ]
        step_one_tokens = runs.base_tokens[pair_prompt, pair_position][:, None]
        with (
            entering_rows(layer_of_chunk, n_variants),
            with_hooks(bridge, freeze),
            cache_activations(bridge, receiver_names) as step_one,
            _stop_after(bridge, None if receivers is None else receiver_end) as stopped,
        ):
            zeros = torch.zeros(n_variants * n_pairs, dtype=torch.long)
            logits = final_logits_at(loaded, step_one_tokens.repeat(n_variants, 1), zeros)
        if receivers is None:  # one row per prompt, in prompt order
            per_row = metric(logits, prompt_index.repeat(n_variants))
            per_row_values[chunk] = per_row.double().view(n_variants, n_prompts)
            continue
        if not stopped():
            raise RuntimeError("step 1 of path patching did not reach its receivers")
        for name in receiver_names:
            # A receiver in a layer before the senders keeps its base value.
            if name in step_one:
                by_variant = step_one[name][:, 0].unflatten(0, (n_variants, n_pairs))
            else:
                by_variant = rows_of(base[name])[:, 0][None].expand(n_variants, -1, -1, -1)
            for v, i in enumerate(chunk):
                recorded[name][i] = by_variant[v]  # [pairs, heads, d_head]

    if receivers is not None:
        per_row_values[:] = _step_two(
            loaded,
            runs,
            metric,
            receivers,
            recorded,
            base,
            (pair_prompt, pair_position),
            prefix_cache,
            token_budget,
            progress,
        )
    values = per_row_values.mean(dim=1)
    table = _result_table(senders, values, metric, runs.direction)
    if per_prompt:
        table["per_prompt"] = list(per_row_values.numpy())
    return table


def _step_two(
    loaded,
    runs: PatchingRuns,
    metric: Metric,
    receivers: Sequence[Component],
    recorded: dict[str, list],
    base: dict,
    pairs: tuple[torch.Tensor, torch.Tensor],
    prefix_cache,
    token_budget: int,
    progress: bool,
) -> torch.Tensor:
    """Step 2 of :func:`path_patching`: the base run with the receivers' inputs taken
    from step 1, ``[senders, prompts]`` metric values.

    Prompts are grouped by read position, and each group computes only the positions
    from its first differing token to its last read position (so little padding is
    computed); a pass stacks as many senders as the token budget allows.
    """
    bridge = loaded.bridge
    n_senders = len(next(iter(recorded.values())))
    pair_prompt, pair_position = pairs
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
        cache = prefix_cache.prefix(start, n_variants, prompts) if start else None
        read_in_pass = (read[prompts] - start).repeat(n_variants)
        with skip, with_hooks(bridge, hooks):
            logits = final_logits_at(loaded, tokens, read_in_pass, None, cache)
        per_row = metric(logits, prompts.repeat(n_variants))
        result[torch.tensor(chunk)[:, None], prompts[None]] = per_row.double().view(
            n_variants, n_group
        )
    return result


class _StopForward(Exception):
    """Raised inside a forward pass once everything needed has been recorded."""


@contextlib.contextmanager
def _stop_after(bridge, layer: int | None) -> Iterator[Callable[[], bool]]:
    """End forward passes once block ``layer``'s attention has read its inputs.

    The hook sits on ``hook_z`` (after q, k and v are computed); the exception it
    raises is swallowed here, so the ``with`` body just ends early. Yields a function
    that tells whether a pass was stopped. ``layer=None`` does nothing.
    """
    state = {"stopped": False}
    if layer is None:
        yield lambda: state["stopped"]
        return

    def stop(activation, hook):
        state["stopped"] = True
        raise _StopForward

    try:
        with with_hooks(bridge, [(f"blocks.{layer}.attn.hook_z", stop)]):
            yield lambda: state["stopped"]
    except _StopForward:
        pass
