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
