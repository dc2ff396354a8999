# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""Structured ablations of many sets of components (a circuit and its random controls).

:func:`ablated_logits` gives the candidates' logits at the read position with each of
many sets ablated (zero, mean over a reference set, or resampled), several sets stacked
on the batch axis per pass, each pass starting at the earliest ablated layer from the
clean run's residual stream (blocks before it compute what the clean run computed).
Size-matched random sets of any components (heads, neurons, MLP layers) come from
:func:`circuit_repro.engine.circuits.random_component_sets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int

from circuit_repro.engine.forward import logits_at, start_at_layer
from circuit_repro.engine.hooks import Component, ablate, cache_activations, scale

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel


@torch.no_grad()
def ablated_logits(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    read_positions: Int[torch.Tensor, " prompt"],
    token_ids: Int[torch.Tensor, "prompt k"],
    sets: Sequence[Sequence[Component]],
    method: str = "mean",
    reference: Int[torch.Tensor, "ref pos"] | None = None,
    token_budget: int = 8192,
    seed: int = 0,
    factor: float = 0.0,
) -> Float[torch.Tensor, "set prompt k"]:
    """Logits of ``token_ids`` at the read positions with each set ablated in turn.

    Args:
        tokens: Prompts of one length (no padding), ``[n_prompts, pos]``.
        sets: The component sets; an empty set is the unablated model.
        method: ``zero``, ``mean`` (mean over ``reference`` at each position),
            ``resample`` (a random reference prompt's activation per prompt, seeded) or
            ``scale`` (multiplied by ``factor``, e.g. head outputs x1.3 or x0.5 as Park,
            Jeong and Kang 2025 do).
        reference: Prompts whose activations define mean and resample ablation (the
            task distribution), of the same length as ``tokens``.
        token_budget: Most rows x positions per forward pass (sets are stacked).
    """
    bridge = loaded.bridge
    n_prompts, length = tokens.shape
    names = sorted({c.hook_name for s in sets for c in s})
    cached = {}
    if method not in ("zero", "scale"):
        if reference is None:
            raise ValueError(f"{method} ablation needs reference prompts")
        with cache_activations(bridge, names) as cached:
            bridge(reference)
    layers = sorted({min((c.layer for c in s), default=loaded.n_layers) for s in sets})
    resid_names = [
        f"blocks.{layer}.hook_resid_pre" for layer in layers if 0 < layer < loaded.n_layers
    ]
    with cache_activations(bridge, resid_names) as clean:
        logits_at(loaded, tokens, read_positions, token_ids=token_ids)
    out = torch.empty(len(sets), n_prompts, token_ids.shape[1])
    per_pass = max(1, token_budget // (n_prompts * length))
    order = sorted(range(len(sets)), key=lambda i: min((c.layer for c in sets[i]), default=0))
    for start in range(0, len(order), per_pass):
        chunk = order[start : start + per_pass]
        first = min(min((c.layer for c in sets[i]), default=loaded.n_layers - 1) for i in chunk)
        first = min(first, loaded.n_layers - 1)
        name = f"blocks.{first}.hook_resid_pre"
        resid = clean[name].repeat(len(chunk), 1, 1) if first > 0 and name in clean else None
        first = first if resid is not None else 0
        plan = {v: list(sets[i]) for v, i in enumerate(chunk)}
        with (
            start_at_layer(bridge, first, resid),
            (
                scale(bridge, plan, factor, n_prompts)
                if method == "scale"
                else ablate(bridge, plan, method, cached, n_prompts, seed=seed)
            ),
        ):
            logits = logits_at(
                loaded,
                tokens.repeat(len(chunk), 1),
                read_positions.repeat(len(chunk)),
                token_ids=token_ids.repeat(len(chunk), 1),
            )
        out[chunk] = logits.float().cpu().view(len(chunk), n_prompts, -1)
    return out


def ablation_hits(
    logits: Float[torch.Tensor, "set prompt k"], correct: Int[torch.Tensor, " prompt"]
) -> np.ndarray:
    """Whether the correct candidate has the largest logit, ``[sets, prompts]``."""
    return (logits.argmax(-1) == correct[None]).numpy()
