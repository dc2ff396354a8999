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
  position). At ``r = d_head`` the projection is the identity. Given the residual
  stream entering the head's layer (:func:`resid_pre_at`, from the unmodified run),
  it starts there: the blocks before compute what they computed without the
  projection, so a curve over many ranks runs them once.

Collecting activations stops the forward pass at the head's layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float, Int

from circuit_repro.engine.forward import logits_at, start_at_layer, stop_at
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
        with (
            cache_activations(loaded.bridge, [component.hook_name]) as store,
            stop_at(loaded.bridge, component.hook_name),
        ):
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
def resid_pre_at(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    layer: int,
    batch_size: int = 16,
) -> Float[torch.Tensor, "prompt pos d_model"]:
    """The residual stream entering block ``layer`` on ``tokens`` (the forward passes
    stop there), batched as :func:`compressed_logits` batches."""
    name = f"blocks.{layer}.hook_resid_pre"
    read = torch.zeros(tokens.shape[0], dtype=torch.long)
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        with cache_activations(loaded.bridge, [name]) as store, stop_at(loaded.bridge, name):
            logits_at(loaded, tokens[chunk], read[chunk])
        out.append(store[name])
    return torch.cat(out)


@torch.no_grad()
def compressed_logits(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    read_positions: Int[torch.Tensor, " prompt"],
    bases: Mapping[Component, torch.Tensor],
    rank: int,
    token_ids: Int[torch.Tensor, "prompt k"] | None = None,
    batch_size: int = 16,
    resid_pre: Float[torch.Tensor, "prompt pos d_model"] | None = None,
) -> torch.Tensor:
    """Logits at the read positions with every component in ``bases`` projected on its
    top ``rank`` directions (the first ``rank`` columns of its basis).

    With ``resid_pre`` (:func:`resid_pre_at` at the earliest layer among ``bases``, on
    the same tokens) the passes start at that layer instead of the embedding.
    """
    kept = {c: basis[:, :rank] for c, basis in bases.items()}
    first = min(c.layer for c in bases) if resid_pre is not None else 0
    outputs = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        ids = None if token_ids is None else token_ids[chunk]
        entering = None if resid_pre is None else resid_pre[chunk]
        with project_onto(loaded.bridge, kept), start_at_layer(loaded.bridge, first, entering):
            outputs.append(logits_at(loaded, tokens[chunk], read_positions[chunk], token_ids=ids))
    return torch.cat(outputs)
