# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""Running parts of a model: from a given layer, from cached keys and values, to given rows.

Every fast path of the engine (:mod:`~circuit_repro.engine.patching`,
:mod:`~circuit_repro.engine.path_patching`, :mod:`~circuit_repro.engine.attribution`,
:mod:`~circuit_repro.engine.behaviour`) computes less than a full forward pass, in
three ways that leave the numbers unchanged (DESIGN.md, "Performance model"):

- *Start at a layer* (:func:`start_at_layer`): blocks before the first intervened layer
  compute exactly what an unintervened run computed, so they are replaced by
  pass-throughs and a cached residual stream enters the first block that runs.
- *Reuse a prefix* (:class:`PrefixCache`): attention is causal, so positions before the
  first changed token are the same in every layer; a run may compute only the suffix,
  reading earlier keys and values from a cache. :func:`prefix_reuse_supported` checks,
  once per model, that this reproduces a full run.
- *Logits only where they are read* (:func:`logits_at`): the final hidden state
  is gathered at one position per row (:func:`gather_rows`) and only those rows are
  unembedded, ``[rows, vocab]`` instead of ``[rows, pos, vocab]``.

:func:`stop_after` and :func:`stop_at` end a forward pass once the activations it needs
are recorded.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int

from circuit_repro.engine.hooks import with_hooks

if TYPE_CHECKING:
    from transformers import DynamicCache

    from circuit_repro.models.load import LoadedModel


def gather_rows(
    values: Float[torch.Tensor, "row pos ..."], positions: Int[torch.Tensor, " row"]
) -> Float[torch.Tensor, "row ..."]:
    """Row ``i`` of ``values`` at position ``positions[i]``: ``values[i, positions[i]]``.

    The one place where "the answer position of each prompt" is read out of a
    ``[rows, pos, ...]`` tensor (hidden states or logits).
    """
    rows = torch.arange(values.shape[0], device=values.device)
    return values[rows, positions.to(values.device)]


def length_batches(
    sequences: Sequence[Sequence[int]], batch_size: int, pad: int | None
) -> Iterator[tuple[list[int], Int[torch.Tensor, "row pos"]]]:
    """Token sequences of several lengths in batches of similar length, right-padded:
    ``(indices into sequences, [rows, longest] tokens)`` per batch.

    Right padding needs no attention mask when only real positions are read: attention
    is causal, so a real position never reads the padding that follows it.
    """
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in rows)
        tokens = torch.full((len(rows), width), pad or 0, dtype=torch.long)
        for r, i in enumerate(rows):
            tokens[r, : len(sequences[i])] = torch.tensor(list(sequences[i]))
        yield rows, tokens


# ------------------------------------------------------------ running from a layer


class _PassThrough(torch.nn.Module):
    """Stands in for a skipped block: returns its input, or a given residual stream."""

    def __init__(self, replacement: torch.Tensor | None = None):
        super().__init__()
        self.replacement = replacement

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.replacement is None else self.replacement


@contextlib.contextmanager
def start_at_layer(
    bridge, layer: int, resid_pre: Float[torch.Tensor, "row pos d_model"] | None
) -> Iterator[None]:
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


class _StopForward(Exception):
    """Raised inside a forward pass once everything needed has been recorded."""


@contextlib.contextmanager
def stop_at(bridge, hook_name: str | None) -> Iterator[Callable[[], bool]]:
    """End forward passes once the activation at ``hook_name`` has been computed.

    Hooks on the same hook point that were installed before entering this block (a
    cache, say) run first and still see the activation. The exception is swallowed
    here, so the ``with`` body just ends early: run one forward pass per ``with``.
    Yields a function that tells whether a pass was stopped. ``hook_name=None`` does
    nothing.
    """
    state = {"stopped": False}
    if hook_name is None:
        yield lambda: state["stopped"]
        return

    def stop(activation, hook):
        state["stopped"] = True
        raise _StopForward

    try:
        with with_hooks(bridge, [(hook_name, stop)]):
            yield lambda: state["stopped"]
    except _StopForward:
        pass


@contextlib.contextmanager
def stop_after(bridge, layer: int | None) -> Iterator[Callable[[], bool]]:
    """End forward passes once block ``layer``'s attention has read its inputs.

    The hook sits on ``hook_z`` (after q, k and v are computed); see :func:`stop_at`.
    ``layer=None`` does nothing.
    """
    with stop_at(bridge, None if layer is None else f"blocks.{layer}.attn.hook_z") as stopped:
        yield stopped


# ------------------------------------------------------------------ prefix reuse


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
    """The decoder's keyword for a key/value cache (``cache`` or ``past_key_values``)."""
    parameters = inspect.signature(hf_model.base_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class PrefixCache:
    """Keys and values of a run, so that patched runs can compute only a suffix."""

    def __init__(self, loaded: LoadedModel, tokens: Int[torch.Tensor, "prompt pos"]):
        from transformers import DynamicCache

        self.loaded = loaded
        cache = DynamicCache()
        with torch.no_grad(), _attention_reads_cache(loaded.bridge):
            loaded.hf_model.base_model(
                input_ids=tokens, use_cache=True, **{_cache_keyword(loaded.hf_model): cache}
            )
        self.keys_values = [(layer.keys, layer.values) for layer in cache.layers]

    def prefix(
        self,
        length: int,
        n_variants: int,
        prompts: Int[torch.Tensor, " prompt"] | None = None,
        first_layer: int = 0,
    ) -> DynamicCache:
        """A fresh cache holding positions ``0 .. length-1`` of ``prompts`` (all: None),
        repeated per variant.

        Layers before ``first_layer`` (skipped by :func:`start_at_layer`, so never
        read) hold a broadcast view of the right shape instead of a copy: copying the
        cache for every variant is most of a short suffix run's cost.
        """
        from transformers import DynamicCache

        cache = DynamicCache()
        n_rows = n_variants * (len(self.keys_values[0][0]) if prompts is None else len(prompts))
        for layer, (keys, values) in enumerate(self.keys_values):
            if layer < first_layer:
                keys = keys[:1, :, :length].expand(n_rows, -1, -1, -1)
                values = values[:1, :, :length].expand(n_rows, -1, -1, -1)
            else:
                if prompts is not None:
                    keys, values = keys[prompts], values[prompts]
                keys = keys[:, :, :length].repeat(n_variants, 1, 1, 1)
                values = values[:, :, :length].repeat(n_variants, 1, 1, 1)
            # Create the layer, then hand it the tensors: update() would copy them again.
            cache.update(keys[:, :, :0], values[:, :, :0], layer)
            entry = cache.layers[layer]
            entry.keys, entry.values = keys, values
        return cache


# --------------------------------------------------------------- logits at positions


def logits_at(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "row pos"],
    read_positions: Int[torch.Tensor, " row"],
    attention_mask: Int[torch.Tensor, "row pos"] | None = None,
    prefix_cache: DynamicCache | None = None,
    token_ids: Int[torch.Tensor, "row k"] | None = None,
) -> Float[torch.Tensor, "row vocab"]:
    """Logits at one position per row, ``[rows, vocab]``, unembedding only those rows.

    Runs the decoder (``hf_model.base_model``, which applies the final norm) with the
    bridge's hooks in place, gathers each row's hidden state at ``read_positions`` and
    applies the output embedding to those rows only (and the final logit soft-cap of
    Gemma-style models, as their causal-LM head does). With ``prefix_cache`` (keys and
    values of earlier positions, see :class:`PrefixCache`), ``tokens`` are the suffix
    that follows them and ``read_positions`` count from the suffix's start.

    With ``token_ids`` only those logits are computed, ``[rows, k]`` (row ``i``'s
    logits of tokens ``token_ids[i]``): a metric that reads two tokens need not
    unembed the whole vocabulary (262k rows for Gemma 3).

    Needs ``loaded.bridge`` only with a ``prefix_cache``: a model loaded without a
    bridge (``load_bridge(path, with_bridge=False)``) runs the plain HF decoder.
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
    last = gather_rows(hidden, read_positions)[:, None]  # [rows, 1, d_model]
    unembed = hf_model.get_output_embeddings()
    if token_ids is None:
        logits = unembed(last)[:, 0]
    else:
        token_ids = token_ids.to(last.device)
        logits = torch.einsum("rd,rkd->rk", last[:, 0], unembed.weight[token_ids])
        if getattr(unembed, "bias", None) is not None:
            logits = logits + unembed.bias[token_ids]
    softcap = getattr(hf_model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


_PREFIX_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Prompts run (twice) by the prefix-reuse check.
PREFIX_CHECK_PROMPTS = 4


@torch.no_grad()
def prefix_reuse_supported(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    read_positions: Int[torch.Tensor, " prompt"],
) -> bool:
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
        full = logits_at(loaded, tokens, read_positions)
        try:
            cache = PrefixCache(loaded, tokens).prefix(split, 1)
            suffix = logits_at(loaded, tokens[:, split:], read_positions - split, None, cache)
            supported = bool((suffix - full).abs().max() < 1e-4 * max(1.0, full.abs().max()))
        except Exception:  # noqa: BLE001 - any failure means: do not reuse prefixes
            supported = False
        _PREFIX_SUPPORT[loaded.bridge] = (supported, tokens.shape[1])
    return supported
