"""Attention read at task roles: how much each head attends from one token to others.

Head classes in circuit papers are defined by attention patterns at named roles
(Wang et al. 2022: name movers attend from the final token to the indirect object,
S-inhibition heads to the second subject mention, duplicate-token heads from S2 to S1,
induction heads from S2 to the token after S1). :func:`attention_at_roles` measures
any such score for every head in one pass over the prompts; the interventions that
overwrite attention rows live in :mod:`circuit_repro.engine.hooks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float

from circuit_repro.engine.hooks import with_hooks

#: ``{score name: (query position, key positions)}`` for one prompt.
RolePairs = Mapping[str, tuple[int, Sequence[int]]]


@torch.no_grad()
def attention_at_roles(
    loaded,
    prompts: Sequence[str],
    pairs: Sequence[RolePairs],
    names: Sequence[str],
    batch_size: int = 16,
) -> dict[str, Float[torch.Tensor, "layer head"]]:
    """Mean attention of every head from each pair's query to its keys (summed over keys).

    Args:
        loaded: A LoadedModel with a bridge.
        prompts: Prompt texts (right-padded in batches; padding follows every query).
        pairs: Per prompt, the role pairs to read (see :data:`RolePairs`).
        names: Score names to return; a name absent from a prompt's pairs adds 0 there.
        batch_size: Prompts per forward pass.

    Returns:
        ``{name: [n_layers, n_heads]}`` float64 tensors: the attention summed over the
        keys, averaged over all prompts.
    """
    bridge, tokenizer = loaded.bridge, loaded.tokenizer
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    totals = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in names}
    for start in range(0, len(prompts), batch_size):
        batch_pairs = pairs[start : start + batch_size]
        encoded = tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True
        )

        def hook(pattern, hook, batch_pairs=batch_pairs):  # [batch, head, query, key]
            layer = hook.layer()
            for row, row_pairs in enumerate(batch_pairs):
                for name, (query, keys) in row_pairs.items():
                    if name in totals:
                        totals[name][layer] += (
                            pattern[row, :, query, list(keys)].sum(dim=-1).double()
                        )
            return pattern

        hooks = [(f"blocks.{layer}.attn.hook_pattern", hook) for layer in range(n_layers)]
        with with_hooks(bridge, hooks):
            bridge(encoded.input_ids, attention_mask=encoded.attention_mask)
    return {name: total / len(prompts) for name, total in totals.items()}


#: Head types read on a repeated random sequence, and the key each query attends to.
HEAD_TYPES = ("induction", "shifted_induction", "previous_token", "duplicate_token")
#: Shifts past the previous occurrence that ``shifted_induction`` considers.
INDUCTION_SHIFTS = (1, 2, 3, 4)


@torch.no_grad()
def repeated_sequence_scores(
    loaded, tokens: torch.Tensor, period: int, first: int = 1, batch_size: int = 32
) -> dict[str, Float[torch.Tensor, "prompt layer head"]]:
    """Head-type scores on sequences that repeat: ``tokens[:, first:first + period]`` is
    written again right after itself (the usual probe of Olsson et al. 2022).

    For each query in the second copy, at position ``q``, the attention to:

    - ``induction``: the token after the previous occurrence of the current token,
      ``q - period + 1`` (prefix matching);
    - ``shifted_induction``: the token ``d`` places after the previous occurrence, for
      the best ``d`` in :data:`INDUCTION_SHIFTS` (per head; ``d = 1`` is
      ``induction``). A model whose earlier heads carry the token ``d`` places back,
      not the previous one, matches and copies this way;
    - ``duplicate_token``: the previous occurrence itself, ``q - period``;
    - ``previous_token``: the token just before, ``q - 1``;

    averaged over the second copy's queries (those whose key lies before them). A
    uniform head scores about ``1 / q`` on each.

    Returns:
        ``{type: [n_prompts, n_layers, n_heads]}`` float64 scores per prompt.
    """
    bridge = loaded.bridge
    n_layers = bridge.cfg.n_layers
    queries = torch.arange(first + period, first + 2 * period)
    shifted = {d: (queries[queries - period + d < queries], d) for d in INDUCTION_SHIFTS}
    plain = {
        "duplicate_token": (queries, queries - period),
        "previous_token": (queries, queries - 1),
    }
    out = {name: [] for name in HEAD_TYPES}
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        scores = {name: [None] * n_layers for name in HEAD_TYPES}

        def hook(pattern, hook, scores=scores):  # [batch, head, query, key]
            layer = hook.layer()
            for name, (rows, keys) in plain.items():
                scores[name][layer] = pattern[:, :, rows, keys].mean(-1).double()
            by_shift = torch.stack(
                [pattern[:, :, q, q - period + d].mean(-1).double() for q, d in shifted.values()]
            )  # [shift, batch, head]
            scores["induction"][layer] = by_shift[0]
            # The best shift per head, chosen on the batch's mean (not per prompt).
            best = by_shift.mean(1).argmax(0)  # [head]
            scores["shifted_induction"][layer] = by_shift[best, :, torch.arange(len(best))].T
            return pattern

        hooks = [(f"blocks.{layer}.attn.hook_pattern", hook) for layer in range(n_layers)]
        with with_hooks(bridge, hooks):
            bridge(batch)
        for name in HEAD_TYPES:
            out[name].append(torch.stack(scores[name], dim=1))
    return {name: torch.cat(parts) for name, parts in out.items()}
