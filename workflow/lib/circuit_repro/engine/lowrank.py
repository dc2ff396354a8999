# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""Low-rank compression of one attention head's queries, keys or values.

Lieberum et al. (2023), "Does Circuit Analysis Interpretability Scale?", section 4,
compress the queries and keys of a "correct letter" head to their top singular
directions and ask how much of the head's effect survives: if a rank of 2 or 3 keeps
it, the head reads a low-dimensional feature (there, "which item of the enumeration
this is"), which can then be inspected.

- :func:`site_activations` collects the head's query, key or value vectors at chosen
  positions of each prompt;
- :func:`singular_basis` gives their right singular vectors, by decreasing singular
  value (uncentred: the mean direction is kept like any other);
- :func:`compressed_logits` reruns the prompts with the activations projected on the
  top ``r`` directions (:func:`~circuit_repro.engine.hooks.project_onto`, at every
  position). At ``r = d_head`` the projection is the identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float, Int

from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, cache_activations, kv_group, project_onto
from circuit_repro.models.load import LoadedModel

SITES = ("q", "k", "v")


def site_component(loaded: LoadedModel, site: str, layer: int, head: int) -> Component:
    """The component carrying query head ``head``'s ``site`` (keys and values of a
    grouped-query model belong to the head's K/V group)."""
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, not {site!r}")
    index = head if site == "q" else kv_group(head, loaded.n_heads, loaded.n_kv_heads)
    return Component(site, layer, index)


@torch.no_grad()
def site_activations(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    component: Component,
    positions: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> Float[torch.Tensor, "n d_head"]:
    """The component's vectors at ``positions[p]`` of each prompt ``p``, stacked."""
    rows = []
    read = torch.zeros(tokens.shape[0], dtype=torch.long)
    for start in range(0, tokens.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        with cache_activations(loaded.bridge, [component.hook_name]) as store:
            logits_at(loaded, tokens[chunk], read[chunk])
        values = store[component.hook_name][:, :, component.index]  # [rows, pos, d_head]
        for row, wanted in enumerate(positions[chunk]):
            rows.append(values[row, list(wanted)])
    return torch.cat(rows).double()


def singular_basis(
    vectors: Float[torch.Tensor, "n d_head"],
) -> Float[torch.Tensor, "d_head d_head"]:
    """Orthonormal right singular vectors of ``vectors`` as columns, by decreasing
    singular value."""
    _, _, vh = torch.linalg.svd(vectors.double(), full_matrices=True)
    return vh.T


@torch.no_grad()
def compressed_logits(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    read_positions: Int[torch.Tensor, " prompt"],
    bases: Mapping[Component, torch.Tensor],
    rank: int,
    token_ids: Int[torch.Tensor, "prompt k"] | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Logits at the read positions with every component in ``bases`` projected on its
    top ``rank`` directions (the first ``rank`` columns of its basis)."""
    kept = {c: basis[:, :rank] for c, basis in bases.items()}
    outputs = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        ids = None if token_ids is None else token_ids[chunk]
        with project_onto(loaded.bridge, kept):
            outputs.append(logits_at(loaded, tokens[chunk], read_positions[chunk], token_ids=ids))
    return torch.cat(outputs)
