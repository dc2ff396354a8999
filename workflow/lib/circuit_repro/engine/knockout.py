# (jaxtyping shape strings such as "row pos" are not forward references)
"""Attention-edge knockouts over ranges of layers, with size-matched random-edge controls.

An *edge* ``(q, k)`` lets query position ``q`` read key position ``k``. Knocking it out
in a layer sets that score to -inf in every head before the softmax, so the row's other
weights renormalise (:func:`~circuit_repro.engine.hooks.knock_out_edges`). Cho et al.
(2024, "Revisiting In-context Learning Inference Circuit in Large Language Models",
§5 and Tables 1-2) disconnect the edges of one step of the ICL circuit in a range of
layers and compare accuracy with a control that knocks out as many random edges.

- :func:`random_edges_like`: the control's edges, as many as the knocked-out ones and
  from the same query positions (keys drawn among that query's other visible keys);
  a query with too few other keys passes its remainder to random causal edges of the
  prompt, so the count per layer always matches exactly. Seeded.
- :class:`KnockoutRuns`: the runs themselves. A knockout in layers ``a ..`` changes
  nothing before layer ``a`` nor before its first query position, so a run starts at
  block ``a`` from the cached residual stream and computes only positions from the
  first knocked-out query on, reading earlier keys and values from the clean run's cache
  (:mod:`circuit_repro.engine.forward`); tests check it against full forward passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from circuit_repro.engine.forward import (
    PrefixCache,
    length_batches,
    logits_at,
    prefix_reuse_supported,
    start_at_layer,
)
from circuit_repro.engine.hooks import cache_activations, knock_out_edges

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel

#: ``(query position, key position)`` pairs of one prompt.
Edges = Sequence[tuple[int, int]]


def edge_mask(
    edges: Edges, n_queries: int, n_keys: int, first_query: int = 0
) -> Bool[torch.Tensor, "query key"]:
    """Boolean ``[n_queries, n_keys]`` mask, True at each edge; query rows count from
    ``first_query`` (a suffix run's first position)."""
    mask = torch.zeros(n_queries, n_keys, dtype=torch.bool)
    for query, key in edges:
        mask[query - first_query, key] = True
    return mask


def random_edges_like(
    edges: Edges,
    length: int,
    rng: np.random.Generator,
    first_key: int = 0,
) -> list[tuple[int, int]]:
    """As many random edges as ``edges``, drawn without repetition, none of them in ``edges``.

    For each query position with ``n`` knocked-out edges, ``n`` keys are drawn among its
    other visible keys (``first_key .. q - 1``: never the query itself, never a key
    before ``first_key``, e.g. an attention sink); when it has fewer, the rest are drawn
    uniformly among all such causal edges of query positions from the earliest knocked-out
    query to ``length - 1`` (so the control changes nothing before the knockout does).
    Either way the result has exactly ``len(set(edges))`` edges, unless the prompt has
    fewer eligible edges, which raises.
    """
    targets = set(edges)
    per_query: dict[int, int] = {}
    for query, _ in targets:
        per_query[query] = per_query.get(query, 0) + 1
    chosen: set[tuple[int, int]] = set()
    shortfall = 0
    for query in sorted(per_query):
        keys = [k for k in range(first_key, query) if (query, k) not in targets]
        take = min(per_query[query], len(keys))
        shortfall += per_query[query] - take
        picks = rng.choice(len(keys), size=take, replace=False) if take else []
        chosen.update((query, keys[i]) for i in picks)
    if shortfall:
        pool = [
            (q, k)
            for q in range(max(first_key + 1, min(per_query)), length)
            for k in range(first_key, q)
            if (q, k) not in targets and (q, k) not in chosen
        ]
        if len(pool) < shortfall:
            raise ValueError(
                f"a prompt of {length} tokens has too few causal edges for a control of "
                f"{len(targets)} edges"
            )
        chosen.update(pool[i] for i in rng.choice(len(pool), size=shortfall, replace=False))
    return sorted(chosen)


@dataclass
class _Batch:
    """Prompts of similar length, right-padded, with the clean run's caches."""

    rows: list[int]  # indices into the prompts
    tokens: Int[torch.Tensor, "row pos"]
    reads: Int[torch.Tensor, " row"]
    resid: dict[int, Float[torch.Tensor, "row pos d_model"]]  # entering each start layer
    cache: PrefixCache | None  # None: this model cannot reuse a prefix


class KnockoutRuns:
    """Prompts whose next-token logits are read with attention edges knocked out.

    Right padding needs no attention mask here: attention is causal, so real positions
    never read the padding that follows them, and padded positions are never read.

    Args:
        loaded: The model, with a bridge.
        tokens: Each prompt's token ids (lengths may differ).
        read_positions: The position whose next-token logits are read, per prompt.
        start_layers: Layers a knockout may start at (each range's first layer); a run
            starts at the latest of these at or before its first knocked-out layer.
        batch_size: Prompts per forward pass (prompts are batched by length).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        tokens: Sequence[Sequence[int]],
        read_positions: Sequence[int],
        start_layers: Sequence[int] = (0,),
        batch_size: int = 16,
    ):
        if len(tokens) != len(read_positions):
            raise ValueError("tokens and read_positions differ in length")
        self.loaded, self.n_prompts = loaded, len(tokens)
        self.start_layers = sorted({0, *start_layers})
        device = loaded.hf_model.device
        names = {layer: f"blocks.{layer}.hook_resid_pre" for layer in self.start_layers if layer}
        self.batches: list[_Batch] = []
        pad = loaded.tokenizer.pad_token_id
        with torch.no_grad():
            for rows, padded in length_batches(tokens, batch_size, pad):
                padded = padded.to(device)
                reads = torch.tensor([int(read_positions[i]) for i in rows], device=device)
                reuse = prefix_reuse_supported(loaded, padded, reads)
                with cache_activations(loaded.bridge, list(names.values())) as cached:
                    cache = PrefixCache(loaded, padded)
                resid = {layer: cached[name] for layer, name in names.items()}
                self.batches.append(_Batch(rows, padded, reads, resid, cache if reuse else None))

    def _start_layer(self, first_layer: int) -> int:
        return max(layer for layer in self.start_layers if layer <= first_layer)

    @torch.no_grad()
    def logits(
        self,
        knockouts: Sequence[Mapping[int, Edges]],
        token_ids: Int[torch.Tensor, "prompt k"],
    ) -> Float[torch.Tensor, "prompt k"]:
        """Logits of ``token_ids`` at each prompt's read position with its edges knocked out.

        Args:
            knockouts: Per prompt, ``{layer: edges}``: the edges knocked out in that layer
                (an empty mapping runs the prompt unchanged).
            token_ids: ``[n_prompts, k]`` tokens whose logits are returned.
        """
        if len(knockouts) != self.n_prompts:
            raise ValueError(f"{len(knockouts)} knockouts for {self.n_prompts} prompts")
        out = torch.empty(token_ids.shape, dtype=torch.float32)
        for batch in self.batches:
            plans = [knockouts[i] for i in batch.rows]
            layers = sorted({layer for plan in plans for layer, e in plan.items() if e})
            start_layer = self._start_layer(layers[0]) if layers else self.start_layers[-1]
            first = min(
                [q for plan in plans for e in plan.values() for q, _ in e]
                + [int(r) for r in batch.reads]
            )
            first = first if batch.cache is not None else 0
            width = batch.tokens.shape[1]
            masks = {
                layer: torch.stack(
                    [edge_mask(plan.get(layer, ()), width - first, width, first) for plan in plans]
                )
                for layer in layers
            }
            cache = (
                batch.cache.prefix(first, 1, first_layer=start_layer)
                if batch.cache is not None and first > 0
                else None
            )
            resid = batch.resid[start_layer][:, first:] if start_layer > 0 else None
            with (
                start_at_layer(self.loaded.bridge, start_layer, resid),
                knock_out_edges(self.loaded.bridge, masks),
            ):
                logits = logits_at(
                    self.loaded,
                    batch.tokens[:, first:],
                    batch.reads - first,
                    None,
                    cache,
                    token_ids=token_ids[batch.rows],
                )
            out[batch.rows] = logits.float().cpu()
        return out
