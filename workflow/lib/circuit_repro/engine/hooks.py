"""Addressing model components and intervening on them through TransformerBridge hooks.

A :class:`Component` names one activation site: the residual stream before, between or
after a block (``resid_pre``, ``resid_mid``, ``resid_post``), a block's attention or
MLP output (``attn_out``, ``mlp_out``), one attention head's output (``head``: the
per-head ``z`` that the output projection reads), a head's query, key or value
(``q``, ``k``, ``v``), an attention pattern (``pattern``) or one MLP neuron
(``neuron``: the hidden activation that the down projection reads). A component
covers every position, or one position when ``position`` is set.

Grouped-query attention: queries have one head per query head, but keys and values
have one head per *key/value group* (SmolLM2: 9 query heads share 3 K/V heads). So
``Component("k", layer, index=g)`` addresses K/V head ``g``, and patching it changes
every query head in group ``g`` (query heads ``g * group_size ... (g + 1) *
group_size - 1``). :func:`kv_group` maps a query head to its K/V head.

Interventions are context managers over a bridge (each installs forward hooks and
removes them on exit):

- :func:`cache_activations`: record activations;
- :func:`patch`: replace a component's activation with another run's;
- :func:`ablate`: zero, mean (over a reference set) or resample ablation;
- :func:`scale`: multiply a component by a factor;
- :func:`override_attention`: force given heads' attention patterns;
- :func:`knock_out_edges`: block attention from query to key positions in given heads;
- :func:`patch_subspace`: replace only the part of an activation inside a subspace;
- :func:`project_onto`: keep only the part of an activation inside a subspace.

All of them accept *stacked variants*: when the batch holds ``n_variants`` copies of
``n_prompts`` prompts (variant-major, rows ``v * n_prompts ... (v + 1) * n_prompts - 1``),
a per-variant list of components patches each copy differently in one forward pass.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

HookFn = Callable[[torch.Tensor, object], torch.Tensor | None]

# Hook name template and the axis that ``index`` selects, per kind. Activations are
# [batch, pos, ...] except patterns, [batch, head, query_pos, key_pos].
_SITES: dict[str, tuple[str, int | None]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", None),
    "resid_mid": ("blocks.{layer}.hook_resid_mid", None),
    "resid_post": ("blocks.{layer}.hook_resid_post", None),
    "attn_out": ("blocks.{layer}.hook_attn_out", None),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", None),
    "head": ("blocks.{layer}.attn.hook_z", 2),
    "q": ("blocks.{layer}.attn.hook_q", 2),
    "k": ("blocks.{layer}.attn.hook_k", 2),
    "v": ("blocks.{layer}.attn.hook_v", 2),
    "pattern": ("blocks.{layer}.attn.hook_pattern", 1),
    "neuron": ("blocks.{layer}.mlp.hook_post", 2),
}
KINDS = tuple(_SITES)
Kind = Literal[
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "head",
    "q",
    "k",
    "v",
    "pattern",
    "neuron",
]


@dataclass(frozen=True, order=True)
class Component:
    """One activation site (see module docstring).

    Attributes:
        kind: One of :data:`KINDS`.
        layer: Block index.
        index: Head (query head for ``head``/``q``/``pattern``, K/V head for ``k``/``v``)
            or neuron; None for whole-stream kinds.
        position: Token position (query position for ``pattern``); None = all.
    """

    kind: str
    layer: int
    index: int | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _SITES:
            raise ValueError(f"unknown component kind {self.kind!r}; choose one of {KINDS}")
        needs_index = _SITES[self.kind][1] is not None
        if needs_index and self.index is None:
            raise ValueError(f"component kind {self.kind!r} needs an index (head or neuron)")
        if not needs_index and self.index is not None:
            raise ValueError(f"component kind {self.kind!r} takes no index")

    @property
    def hook_name(self) -> str:
        """The TransformerBridge hook point that carries this activation."""
        return _SITES[self.kind][0].format(layer=self.layer)

    def selector(self, first_position: int = 0) -> tuple:
        """Index tuple selecting this component in its hook's activation tensor.

        Args:
            first_position: Absolute position of the activation's first entry along its
                position (query) axis; nonzero when a run computes only a suffix of the
                prompt (see :func:`circuit_repro.engine.patching.patching_sweep`).
        """
        axis = _SITES[self.kind][1]
        position = slice(None) if self.position is None else self.position - first_position
        if self.kind == "pattern":  # [batch, head, query_pos, key_pos]
            return (slice(None), self.index, position)
        if axis is None:
            return (slice(None), position)
        return (slice(None), position, self.index)

    def label(self) -> dict[str, object]:
        """Columns for result tables."""
        return {
            "kind": self.kind,
            "layer": self.layer,
            "index": self.index,
            "position": self.position,
        }


def kv_group(query_head: int, n_heads: int, n_kv_heads: int) -> int:
    """The key/value head that ``query_head`` reads under grouped-query attention."""
    if n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads do not split into {n_kv_heads} K/V groups")
    return query_head // (n_heads // n_kv_heads)


def query_heads_of_group(group: int, n_heads: int, n_kv_heads: int) -> range:
    """The query heads that share key/value head ``group``."""
    size = n_heads // n_kv_heads
    return range(group * size, (group + 1) * size)


# ------------------------------------------------------------------ enumerations


def model_dims(bridge) -> dict[str, int]:
    """Layer, head, K/V head, d_head and MLP sizes of a bridge's model."""
    cfg = bridge.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return {
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": n_kv,
        "d_head": cfg.d_head,
        "d_model": cfg.d_model,
        "d_mlp": cfg.d_mlp,
    }


def has_kind(bridge, kind: str) -> bool:
    """Whether the model exposes ``kind`` (parallel-attention models such as GPT-NeoX
    have no ``resid_mid``)."""
    return _SITES[kind][0].format(layer=0) in bridge.hook_dict


def all_components(bridge, kind: str, positions: Iterable[int | None] = (None,)) -> list[Component]:
    """Every component of ``kind`` (each layer, each head/neuron), at each of ``positions``."""
    if not has_kind(bridge, kind):
        raise ValueError(
            f"this model has no {kind!r} activation ({_SITES[kind][0].format(layer=0)} "
            "is not a hook point; parallel-attention blocks have no resid_mid)"
        )
    dims = model_dims(bridge)
    per_layer = {
        "head": dims["n_heads"],
        "q": dims["n_heads"],
        "pattern": dims["n_heads"],
        "k": dims["n_kv_heads"],
        "v": dims["n_kv_heads"],
        "neuron": dims["d_mlp"],
    }
    components = []
    positions = list(positions)
    for layer in range(dims["n_layers"]):
        indices = range(per_layer[kind]) if kind in per_layer else [None]
        for index in indices:
            for position in positions:
                components.append(Component(kind, layer, index, position))
    return components


# ------------------------------------------------------------------ hook plumbing


@contextlib.contextmanager
def with_hooks(bridge, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Install forward hooks ``(hook_name, fn)`` for the duration of the block."""
    with bridge.hooks(fwd_hooks=list(hooks)):
        yield


def _variant_rows(n_prompts: int | None, variant: int | None) -> slice:
    if variant is None or n_prompts is None:
        return slice(None)
    return slice(variant * n_prompts, (variant + 1) * n_prompts)


def _rows_of(selector: tuple, rows: slice) -> tuple:
    return (rows, *selector[1:])


VariantSpec = Mapping[int, Sequence[Component]] | Sequence[Component]


def _by_hook(components: VariantSpec) -> dict[str, list[tuple[int | None, Component]]]:
    """Group (variant, component) pairs by hook name. A plain sequence = one variant
    applied to the whole batch (variant None)."""
    grouped: dict[str, list[tuple[int | None, Component]]] = defaultdict(list)
    items = components.items() if isinstance(components, Mapping) else [(None, list(components))]
    for variant, comps in items:
        for component in comps:
            grouped[component.hook_name].append((variant, component))
    return grouped


@contextlib.contextmanager
def cache_activations(
    bridge, names: Iterable[str], store: dict[str, torch.Tensor] | None = None, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the activations at ``names`` during the block into a dict.

    Hooks run in installation order, so a cache installed *after* an intervention on
    the same hook records the intervened value.
    """
    store = {} if store is None else store

    def make(name: str) -> HookFn:
        def hook(activation, hook):
            store[name] = activation.detach() if detach else activation

        return hook

    with with_hooks(bridge, [(name, make(name)) for name in names]):
        yield store


def _replacement_hooks(
    components: VariantSpec,
    value_for: Callable[[Component, slice, torch.Tensor], torch.Tensor],
    n_prompts: int | None,
    first_position: int = 0,
) -> list[tuple[str, HookFn]]:
    hooks = []
    for name, pairs in _by_hook(components).items():

        def hook(activation, hook, pairs=pairs):
            activation = activation.clone()
            for variant, component in pairs:
                rows = _variant_rows(n_prompts, variant)
                index = _rows_of(component.selector(first_position), rows)
                activation[index] = value_for(component, rows, activation[index])
            return activation

        hooks.append((name, hook))
    return hooks


def _source_value(
    source: Mapping[str, torch.Tensor], component: Component, first_position: int = 0
) -> torch.Tensor:
    """The source activation matching ``component.selector(first_position)`` in a run
    that covers only positions ``first_position ..`` (the source covers them all)."""
    try:
        activation = source[component.hook_name]
    except KeyError:
        raise KeyError(
            f"the source cache has no {component.hook_name!r}; cache it before patching"
        ) from None
    selected = activation[component.selector()]
    if component.position is None and first_position:
        # After selection the position (query) axis is axis 1 for every kind: an integer
        # head index drops the head axis of patterns.
        selected = selected.narrow(1, first_position, selected.shape[1] - first_position)
    return selected


@contextlib.contextmanager
def patch(
    bridge,
    components: VariantSpec,
    source: Mapping[str, torch.Tensor],
    n_prompts: int | None = None,
    first_position: int = 0,
) -> Iterator[None]:
    """Replace components' activations with those of another run.

    Args:
        bridge: A TransformerBridge.
        components: Components to patch; or ``{variant: components}`` for stacked
            variants (then ``n_prompts`` is the number of prompts per variant).
        source: Activations of the source run (hook name -> ``[n_prompts, ...]``), for
            example a :func:`cache_activations` store of the clean run.
        n_prompts: Prompts per variant when the batch stacks variants.
        first_position: First position the patched run computes (a run that reuses
            cached keys and values for earlier positions); ``source`` covers all.
    """

    def value(component, rows, current):
        selected = _source_value(source, component, first_position)
        return selected.to(current.dtype).expand_as(current)

    with with_hooks(bridge, _replacement_hooks(components, value, n_prompts, first_position)):
        yield


@contextlib.contextmanager
def ablate(
    bridge,
    components: VariantSpec,
    method: Literal["zero", "mean", "resample"] = "mean",
    reference: Mapping[str, torch.Tensor] | None = None,
    n_prompts: int | None = None,
    seed: int = 0,
) -> Iterator[None]:
    """Ablate components: set them to zero, to their mean, or to another prompt's value.

    Args:
        method: ``zero``; ``mean`` = mean over the reference prompts (for each
            position); ``resample`` = the activation of a different, randomly drawn
            reference prompt for each prompt (seeded).
        reference: Cached activations of a reference distribution (e.g. the ABC
            prompts for IOI), ``[n_reference, pos, ...]``; required unless ``zero``.
    """
    if method != "zero" and reference is None:
        raise ValueError(f"{method} ablation needs reference activations")
    generator = torch.Generator().manual_seed(seed)

    def value(component, rows, current):
        if method == "zero":
            return torch.zeros_like(current)
        ref = _source_value(reference, component)  # [n_reference, ...]
        if method == "mean":
            return ref.mean(dim=0, keepdim=True).to(current.dtype).expand_as(current)
        if method == "resample":
            draws = torch.randint(0, ref.shape[0], (current.shape[0],), generator=generator)
            return ref[draws].to(current.dtype)
        raise ValueError(f"unknown ablation {method!r}; choose zero, mean or resample")

    with with_hooks(bridge, _replacement_hooks(components, value, n_prompts)):
        yield


@contextlib.contextmanager
def scale(
    bridge, components: VariantSpec, factor: float, n_prompts: int | None = None
) -> Iterator[None]:
    """Multiply components by ``factor`` (e.g. 0.5 or 1.3 on head outputs, Park et al. 2025)."""

    def value(component, rows, current):
        return current * factor

    with with_hooks(bridge, _replacement_hooks(components, value, n_prompts)):
        yield


@contextlib.contextmanager
def override_attention(
    bridge, layer: int, heads: Sequence[int], pattern: torch.Tensor
) -> Iterator[None]:
    """Force ``heads`` of ``layer`` to attend with ``pattern``.

    Args:
        pattern: ``[batch, query_pos, key_pos]`` (shared by the heads) or
            ``[batch, len(heads), query_pos, key_pos]``; rows should sum to 1 and be
            causal. Merullo et al. 2023 use this to give Colored Objects heads IOI-like
            patterns.
    """
    heads = list(heads)

    def hook(activation, hook):
        activation = activation.clone()
        new = pattern if pattern.dim() == 4 else pattern[:, None].expand(-1, len(heads), -1, -1)
        activation[:, heads] = new.to(activation.dtype)
        return activation

    with with_hooks(bridge, [(f"blocks.{layer}.attn.hook_pattern", hook)]):
        yield


@contextlib.contextmanager
def override_attention_rows(
    bridge,
    layer: int,
    heads: Sequence[int],
    query_positions: torch.Tensor,
    key_weights: torch.Tensor,
) -> Iterator[None]:
    """Set the attention of ``heads`` at one query position per batch row.

    The rest of the pattern is left as computed. This is the intervention of Merullo
    et al. 2023 (section 5): at the final position, chosen heads are made to attend
    where their IOI counterparts would.

    Args:
        query_positions: ``[batch]`` query position of each row, counted along the
            pattern's query axis (in a run that computes only a suffix, from its start).
        key_weights: ``[batch, key_pos]`` attention weights for that query (rows sum to
            1 and put no weight after the query's own absolute position).
    """
    heads = list(heads)

    def hook(pattern, hook):  # [batch, head, query_pos, key_pos]
        pattern = pattern.clone()
        rows = torch.arange(pattern.shape[0], device=pattern.device)
        queries = query_positions.to(pattern.device)
        weights = key_weights.to(pattern.device, pattern.dtype)
        for head in heads:
            pattern[rows, head, queries] = weights
        return pattern

    with with_hooks(bridge, [(f"blocks.{layer}.attn.hook_pattern", hook)]):
        yield


@contextlib.contextmanager
def knock_out_edges(
    bridge,
    masks: Mapping[int, torch.Tensor],
    heads: Sequence[int] | None = None,
) -> Iterator[None]:
    """Block attention along given (query -> key) edges in given layers, then renormalise.

    Args:
        masks: ``{layer: mask}``; each mask is boolean ``[batch, query_pos, key_pos]``
            (or ``[query_pos, key_pos]`` for every row), True where the edge is knocked
            out. Its query axis is the run's: in a run that computes only a suffix from
            cached keys and values, the suffix's rows. Implemented on the pre-softmax
            scores (set to -inf), as attention knockouts are in Cho et al. 2024, so the
            remaining weights of a row renormalise; a query row whose every edge is
            blocked keeps its original pattern.
        heads: Heads to affect (None = all heads of each layer).
    """
    head_index = slice(None) if heads is None else list(heads)

    def make(mask: torch.Tensor) -> HookFn:
        def hook(scores, hook):  # [batch, head, query, key]
            block = mask if mask.dim() == 3 else mask[None]
            block = block[:, None].to(scores.device)  # [batch, 1, q, k]
            scores = scores.clone()
            selected = scores[:, head_index]
            blocked = selected.masked_fill(block, float("-inf"))
            all_blocked = torch.isinf(blocked).all(dim=-1, keepdim=True)
            scores[:, head_index] = torch.where(all_blocked, selected, blocked)
            return scores

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_attn_scores", make(mask)) for layer, mask in masks.items()]
    with with_hooks(bridge, hooks):
        yield


@contextlib.contextmanager
def patch_subspace(
    bridge,
    component: Component,
    basis: torch.Tensor,
    source: Mapping[str, torch.Tensor],
) -> Iterator[None]:
    """Replace only the part of an activation that lies in ``span(basis)``.

    ``x <- x + (s - x) B B^T`` with ``B`` an orthonormal ``[dim, k]`` basis and ``s`` the
    source activation: the component of ``x`` inside the subspace becomes the
    source's, the orthogonal complement is kept (distributed interchange intervention,
    Geiger et al. 2023; Makelov et al. 2023).
    """
    projector = basis @ basis.T  # [dim, dim]

    def value(comp, rows, current):
        delta = _source_value(source, comp).to(current.dtype) - current
        return current + delta @ projector.to(current.dtype)

    with with_hooks(bridge, _replacement_hooks([component], value, None)):
        yield


@contextlib.contextmanager
def project_onto(bridge, components: Mapping[Component, torch.Tensor]) -> Iterator[None]:
    """Keep only the part of each component's activation that lies in its subspace:
    ``x <- x B B^T`` with ``B`` an orthonormal ``[dim, k]`` basis per component (a
    low-rank compression of, e.g., a head's queries; Lieberum et al. 2023, section 4).
    With ``k = dim`` the activation is unchanged."""
    projectors = {c: basis @ basis.T for c, basis in components.items()}

    def value(comp, rows, current):
        return current @ projectors[comp].to(current.dtype)

    with with_hooks(bridge, _replacement_hooks(list(components), value, None)):
        yield
