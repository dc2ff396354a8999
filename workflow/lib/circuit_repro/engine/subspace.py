# (jaxtyping shape strings such as "row d" are not forward references)
"""Interventions at one position, on whole activations or on subspaces, and DAS.

An *interchange* runs the model on a base prompt while one activation, at one position,
is set (wholly or inside a subspace) to its value on a source prompt. Distributed
alignment search (DAS; Geiger et al. 2024, arXiv 2303.02536) learns the subspace: an
orthonormal basis trained so that the interchanged run gives the answer a causal model
predicts. Makelov, Lange & Nanda (2023, arXiv 2311.17030) show that such a learned
1-D subspace can change the output through a *dormant pathway*: a direction ``v`` in an
MLP's hidden activations splits into a part in the row space of the MLP's output
weights and a part in their kernel (:func:`rowspace_split`), and the kernel part, which
on its own cannot change anything, makes the patch work by moving the activation along
the row-space part by an amount it would never take naturally.

What lives here, and what TransformerLens provides:

- :class:`PositionRuns`: base prompts with the position of the intervention and the
  position read, run from the intervened layer at the intervened position only. The
  positions before the intervention are the same in every run (attention is causal),
  so their keys and values come from a cache (:class:`~circuit_repro.engine.forward.PrefixCache`)
  and the blocks before the layer are skipped
  (:func:`~circuit_repro.engine.forward.start_at_layer`). An IOI interchange at the
  final token then costs one token per prompt through the later blocks instead of a
  whole forward pass, for training too: gradients are those of the full run. Prompts
  are grouped by length and position, so one pass serves a group without padding.
- :func:`collect_at`: activations at one position per prompt (the source values).
- :func:`fit_das`: DAS on a :class:`PositionRuns`. The subspace, its orthogonal
  parametrisation and the interchange are TransformerLens 4.3's
  (``transformer_lens.tools.analysis.interchange``: ``LearnedSubspace``,
  ``SubspaceInterchange``; its ``NormMatchedPlacebo`` and ``random_basis`` are the
  random-subspace control). Its own ``fit_das`` runs a whole forward pass per batch of
  prompts of any length; ours draws each batch within one group of
  :class:`PositionRuns`, so that one suffix pass from the intervened layer serves it.
  With one prompt shape and full batches the two take the same steps
  (:mod:`circuit_repro.bench.das` checks that the learned bases agree).
- :func:`rowspace_split` and :func:`read_span`: the subspaces a direction is split
  against (an MLP's output weights; the directions some heads' queries read).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens.tools.analysis.interchange import LearnedSubspace, SubspaceInterchange

from circuit_repro.engine.forward import (
    PrefixCache,
    logits_at,
    prefix_reuse_supported,
    start_at_layer,
    stop_after,
)
from circuit_repro.engine.hooks import cache_activations, with_hooks

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel

Intervention = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps (base activations, source activations), both ``[rows, ...]`` at the intervened
position, to the new base activations (TransformerLens's ``Intervention``)."""


def full_patch(base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The whole activation from the source: ordinary activation patching."""
    return source.to(base.dtype).expand_as(base)


def layer_of(hook_name: str) -> int:
    """The block index of a ``blocks.L....`` hook name."""
    parts = hook_name.split(".")
    if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"{hook_name!r} is not a block hook (blocks.<layer>.<name>)")
    return int(parts[1])


@dataclass
class _Group:
    """Prompts of one length and one intervened position, ready for suffix runs."""

    rows: Int[torch.Tensor, " row"]  # indices into the prompts
    tokens: Int[torch.Tensor, "row pos"]
    start: int  # first position computed (the intervened one, or 0 without a cache)
    patch: int  # intervened position
    reads: Int[torch.Tensor, " row"]  # read positions
    resid: dict[int, Float[torch.Tensor, "row suffix d_model"]]  # entering each start layer
    cache: PrefixCache | None


class PositionRuns:
    """Base prompts, each with one intervened position and one read position.

    Interventions at layers ``>= start_layer`` run only blocks ``start_layer ..`` and
    only positions from the intervened one on (when the model supports reusing cached
    keys and values, which :func:`~circuit_repro.engine.forward.prefix_reuse_supported`
    checks; otherwise from position 0). The results equal full forward passes.

    Args:
        loaded: The model, with a bridge.
        tokens: Each prompt's token ids (no padding; lengths may differ).
        patch_positions: The position intervened on in each prompt.
        read_positions: The position whose next-token logits are read (at or after the
            intervened position).
        start_layer: The earliest layer any intervention will touch, or several such
            layers: the runs then start at the first, and :meth:`from_layer` gives the
            same runs starting at another (one set of caches serves them all).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        tokens: Sequence[Sequence[int]],
        patch_positions: Sequence[int],
        read_positions: Sequence[int],
        start_layer: int | Sequence[int] = 0,
    ):
        start_layers = sorted({start_layer} if isinstance(start_layer, int) else set(start_layer))
        if not len(tokens) == len(patch_positions) == len(read_positions):
            raise ValueError("tokens, patch_positions and read_positions differ in length")
        if not start_layers or not all(0 <= layer < loaded.n_layers for layer in start_layers):
            raise ValueError(f"start layers must be in [0, {loaded.n_layers}), got {start_layer}")
        for i, (ids, patch, read) in enumerate(
            zip(tokens, patch_positions, read_positions, strict=True)
        ):
            if not 0 <= patch <= read < len(ids):
                raise ValueError(
                    f"prompt {i}: need 0 <= patch position ({patch}) <= read position "
                    f"({read}) < length ({len(ids)})"
                )
        self.loaded, self.n_prompts = loaded, len(tokens)
        self.start_layer = start_layers[0]
        device = loaded.hf_model.device
        by_key: dict[tuple[int, int], list[int]] = {}
        for i, (ids, patch) in enumerate(zip(tokens, patch_positions, strict=True)):
            by_key.setdefault((len(ids), int(patch)), []).append(i)
        self.groups: list[_Group] = []
        resid_names = {layer: f"blocks.{layer}.hook_resid_pre" for layer in start_layers}
        with torch.no_grad():
            # Longest first: the prefix-reuse check then runs once, on the longest prompts.
            for (_length, patch), rows in sorted(by_key.items(), reverse=True):
                group_tokens = torch.tensor([list(tokens[i]) for i in rows], device=device)
                reads = torch.tensor([int(read_positions[i]) for i in rows], device=device)
                reuse = patch > 0 and prefix_reuse_supported(loaded, group_tokens, reads)
                start = patch if reuse else 0
                with cache_activations(loaded.bridge, list(resid_names.values())) as cached:
                    cache = PrefixCache(loaded, group_tokens)
                resid = {layer: cached[name][:, start:] for layer, name in resid_names.items()}
                self.groups.append(
                    _Group(
                        rows=torch.tensor(rows),
                        tokens=group_tokens,
                        start=start,
                        patch=patch,
                        reads=reads,
                        resid=resid,
                        cache=cache if reuse else None,
                    )
                )

    def from_layer(self, layer: int) -> PositionRuns:
        """The same runs starting at ``layer`` (one of the ``start_layer`` values given)."""
        if layer not in self.groups[0].resid:
            raise ValueError(
                f"these runs cache the residual stream at {sorted(self.groups[0].resid)}, not {layer}"
            )
        runs = copy.copy(self)
        runs.start_layer = layer
        return runs

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """Shuffled batches of at most ``batch_size`` prompts, each within one group:
        ``(group index, member indices within the group)``."""
        batches = []
        for g, group in enumerate(self.groups):
            order = rng.permutation(len(group.rows))
            batches.extend((g, order[i : i + batch_size]) for i in range(0, len(order), batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def logits(
        self,
        group_index: int,
        members: Sequence[int] | np.ndarray,
        hooks: Sequence[tuple[str, Callable]] = (),
        token_ids: Int[torch.Tensor, "prompt k"] | None = None,
    ) -> Float[torch.Tensor, "row vocab"]:
        """Logits at the read positions of some prompts of one group (with gradients).

        ``hooks`` are ``(hook name, fn(activation, patch_index, rows))``: ``fn`` gets
        the activation of the run (positions from the group's start on), the index of
        the intervened position in it, and the prompts' indices, and returns the new
        activation. ``token_ids`` (``[n_prompts, k]``, indexed by prompt) restricts
        the logits to those tokens.
        """
        group = self.groups[group_index]
        members = torch.as_tensor(np.asarray(members), dtype=torch.long)
        rows = group.rows[members]
        patch_index = group.patch - group.start

        def wrap(fn):
            return lambda activation, hook: fn(activation, patch_index, rows)

        cache = None
        if group.cache is not None:
            cache = group.cache.prefix(
                group.start,
                1,
                prompts=members.to(group.tokens.device),
                first_layer=self.start_layer,
            )
        resid = group.resid[self.start_layer][members] if self.start_layer > 0 else None
        ids = None if token_ids is None else token_ids[rows]
        with (
            start_at_layer(self.loaded.bridge, self.start_layer, resid),
            with_hooks(self.loaded.bridge, [(name, wrap(fn)) for name, fn in hooks]),
        ):
            return logits_at(
                self.loaded,
                group.tokens[members, group.start :],
                group.reads[members] - group.start,
                None,
                cache,
                token_ids=ids,
            )

    @torch.no_grad()
    def all_logits(
        self,
        hooks: Sequence[tuple[str, Callable]] = (),
        token_ids: Int[torch.Tensor, "prompt k"] | None = None,
        batch_size: int = 256,
    ) -> Float[torch.Tensor, "prompt vocab"]:
        """:meth:`logits` for every prompt, in prompt order, without gradients."""
        out: list[torch.Tensor | None] = [None] * self.n_prompts
        for g, group in enumerate(self.groups):
            for i in range(0, len(group.rows), batch_size):
                members = np.arange(i, min(i + batch_size, len(group.rows)))
                logits = self.logits(g, members, hooks, token_ids).float().cpu()
                for row, value in zip(group.rows[members].tolist(), logits, strict=True):
                    out[row] = value
        return torch.stack(out)  # type: ignore[arg-type]


def fewest_shapes(shapes: Sequence[Hashable], n: int) -> list[int]:
    """Indices of up to ``n`` items, taken from the largest groups of equal ``shapes``
    first (in their order within a group), returned sorted: each distinct shape (prompt
    length and intervened position) costs :class:`PositionRuns` one pass per step,
    whatever the group's size."""
    groups: dict[Hashable, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    ordered = sorted(groups.values(), key=lambda members: (-len(members), members[0]))
    return sorted([i for members in ordered for i in members][:n])


def position_hook(
    hook_name: str, replace: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[str, Callable]:
    """A :meth:`PositionRuns.logits` hook that sets the activation at the intervened
    position to ``replace(activation there [rows, ...], prompt indices [rows])``."""

    def fn(activation, patch_index, rows):
        new = replace(activation[:, patch_index], rows)
        activation = activation.clone()
        activation[:, patch_index] = new
        return activation

    return hook_name, fn


def interchange_hook(
    hook_name: str, intervention: Intervention, source: torch.Tensor
) -> tuple[str, Callable]:
    """A :meth:`PositionRuns.logits` hook applying ``intervention`` at the intervened
    position, with ``source[prompt]`` (``[n_prompts, ...]``) as each prompt's source."""
    return position_hook(
        hook_name, lambda at, rows: intervention(at, source[rows].to(at.device, at.dtype))
    )


def patch_along(
    base: Float[torch.Tensor, "row dim"],
    source: Float[torch.Tensor, "row dim"],
    directions: Float[torch.Tensor, "row dim"],
) -> Float[torch.Tensor, "row dim"]:
    """A 1-D interchange with one unit direction per row: each row's coordinate along
    its direction becomes the source's (``SubspaceInterchange`` with a per-row basis)."""
    directions = directions.to(base.device, base.dtype)
    return base + ((source.to(base.dtype) - base) * directions).sum(-1, keepdim=True) * directions


@torch.no_grad()
def collect_at(
    loaded: LoadedModel,
    tokens: Sequence[Sequence[int]],
    positions: Sequence[int],
    hook_names: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Activations at ``positions[i]`` of prompt ``i``: ``{hook: [n_prompts, ...]}``
    (on the CPU). Prompts of one length share a forward pass, which stops after the
    last block a hook needs."""
    device = loaded.hf_model.device
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(tokens):
        by_length.setdefault(len(ids), []).append(i)
    last = max(layer_of(name) for name in hook_names)
    stop_layer = last + 1 if last + 1 < loaded.n_layers else None
    out: dict[str, list] = {name: [None] * len(tokens) for name in hook_names}
    for rows in by_length.values():
        group = torch.tensor([list(tokens[i]) for i in rows], device=device)
        with (
            cache_activations(loaded.bridge, hook_names) as cached,
            stop_after(loaded.bridge, stop_layer),
        ):
            loaded.hf_model.base_model(input_ids=group, use_cache=False)
        picked = torch.tensor([int(positions[i]) for i in rows], device=device)
        for name in hook_names:
            values = cached[name][torch.arange(len(rows), device=device), picked].cpu()
            for row, value in zip(rows, values, strict=True):
                out[name][row] = value
    return {name: torch.stack(values) for name, values in out.items()}


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Model parameters without gradients for the block; their flags restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@dataclass(frozen=True)
class DASFit:
    """A subspace learned by :func:`fit_das`.

    Attributes:
        basis: Orthonormal basis, ``[dim, rank]``.
        losses: Mean training loss per epoch.
        hook_name: Where it was trained.
    """

    basis: Float[torch.Tensor, "dim rank"]
    losses: tuple[float, ...]
    hook_name: str


def fit_das(
    runs: PositionRuns,
    hook_name: str,
    source: Float[torch.Tensor, "prompt dim"],
    targets: Int[torch.Tensor, " prompt"],
    *,
    rank: int = 1,
    epochs: int = 30,
    batch_size: int = 20,
    lr: float = 0.01,
    final_lr_factor: float = 0.1,
    seed: int = 0,
    vocabulary: Int[torch.Tensor, " k"] | None = None,
    progress: bool = True,
) -> DASFit:
    """Learn the ``rank``-dimensional subspace at ``hook_name`` whose interchange makes
    the model predict ``targets`` (DAS; Geiger et al. 2024, as used by Makelov et al.
    2023, §4 and App. A: Adam, the learning rate decaying linearly to
    ``final_lr_factor`` of ``lr`` over the epochs, batches of 20, cross-entropy over
    the vocabulary at the read position).

    ``source[i]`` is the source activation for base prompt ``i`` at the intervened
    position (:func:`collect_at`), ``targets[i]`` the token the causal model predicts
    for base ``i`` with the feature taken from source ``i``. The basis is TransformerLens's
    ``LearnedSubspace`` (orthogonal parametrisation), initialised from ``seed``; batches
    are drawn within :class:`PositionRuns` groups in a seeded order. Model parameters
    are frozen during the fit and restored after. With ``vocabulary`` (token ids, each
    target among them) the cross-entropy is over those tokens only, and only their
    logits are computed.
    """
    loaded = runs.loaded
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        subspace = LearnedSubspace(source.shape[-1], rank)
    device = loaded.hf_model.device
    subspace = subspace.to(device)
    intervention = SubspaceInterchange(subspace)
    optimizer = torch.optim.Adam(subspace.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=final_lr_factor, total_iters=max(epochs, 1)
    )
    rng = np.random.default_rng(seed)
    targets = torch.as_tensor(targets, dtype=torch.long)
    token_ids = None
    if vocabulary is not None:
        vocabulary = torch.as_tensor(vocabulary, dtype=torch.long)
        matches = targets[:, None] == vocabulary[None, :]  # [prompt, k]
        if not bool(matches.any(dim=1).all()):
            raise ValueError("every target must be in the vocabulary the loss is over")
        targets = matches.int().argmax(dim=1)  # index within the vocabulary
        token_ids = vocabulary.expand(runs.n_prompts, -1)
    source = source.to(device)
    losses = []
    with frozen(loaded.hf_model):
        for _epoch in tqdm(range(epochs), desc=f"DAS {hook_name}", disable=not progress):
            total, count = 0.0, 0
            for g, members in runs.batches(batch_size, rng):
                rows = runs.groups[g].rows[torch.as_tensor(members, dtype=torch.long)]
                hooks = [interchange_hook(hook_name, intervention, source)]
                logits = runs.logits(g, members, hooks, token_ids)
                loss = F.cross_entropy(logits.float(), targets[rows].to(logits.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(members)
                count += len(members)
            schedule.step()
            losses.append(total / max(count, 1))
    return DASFit(subspace.basis.detach().clone(), tuple(losses), hook_name)


def row_space(weight: Float[torch.Tensor, "d_in d_out"]) -> Float[torch.Tensor, "d_in rank"]:
    """An orthonormal basis of the row space of ``weight``, the activations (rows,
    ``d_in``) that ``x @ weight`` can see: the left singular vectors whose singular
    values exceed float64 rounding (TransformerLens's ``W_out`` convention, ``[d_mlp,
    d_model]``). Its orthogonal complement is the kernel."""
    w = weight.detach().double().cpu()
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    keep = s > s.max() * max(w.shape) * torch.finfo(torch.float64).eps
    return u[:, keep].float()


def split(
    direction: Float[torch.Tensor, " dim"], basis: Float[torch.Tensor, "dim rank"]
) -> tuple[Float[torch.Tensor, " dim"], Float[torch.Tensor, " dim"]]:
    """``direction``'s part inside ``span(basis)`` (orthonormal) and the rest; they sum
    to ``direction`` (computed in float64)."""
    b = basis.detach().double().cpu()
    v = direction.detach().reshape(-1).double().cpu()
    inside = b @ (b.T @ v)
    return inside.to(direction.dtype), (v - inside).to(direction.dtype)


def rowspace_split(
    direction: Float[torch.Tensor, " d_in"], weight: Float[torch.Tensor, "d_in d_out"]
) -> tuple[Float[torch.Tensor, " d_in"], Float[torch.Tensor, " d_in"]]:
    """Split ``direction`` into its part in the row space of ``weight`` and its part in
    the kernel (Makelov et al. 2023, §4.2): ``x @ weight`` sees only the first, and
    ``kernel @ weight`` is zero up to rounding."""
    return split(direction, row_space(weight))


def unit(vector: torch.Tensor) -> Float[torch.Tensor, "dim 1"]:
    """``vector`` normalised, as a ``[dim, 1]`` basis for ``SubspaceInterchange``."""
    flat = vector.reshape(-1)
    return (flat / flat.norm().clamp_min(1e-12)).reshape(-1, 1)


def read_span(
    loaded: LoadedModel,
    heads: Sequence[tuple[int, int]],
    resid: dict[int, Float[torch.Tensor, "row d_model"]],
) -> Float[torch.Tensor, "d_model rank"]:
    """An orthonormal basis of the residual-stream directions that ``heads``' queries
    read: the row space of each query's Jacobian with respect to the residual stream
    entering its layer (the layer's norm and query projection, rotary embedding
    included), at the mean of ``resid[layer]`` (``[rows, d_model]`` activations at the
    read position). Makelov et al. (2023, §4.3) take the span of the name movers'
    query weights ``W_Q`` of GPT-2 small with its layer norms folded in; the Jacobian
    is that map for any architecture and norm.
    """
    rows = []
    with frozen(loaded.hf_model):
        for layer in sorted({layer for layer, _ in heads}):
            if layer == 0:
                raise ValueError("read_span reads the residual stream entering a layer > 0")
            point = resid[layer].float().mean(0).to(loaded.hf_model.device)
            x = point.view(1, 1, -1).clone().requires_grad_(True)
            captured = {}

            def capture(activation, hook, captured=captured):
                captured["q"] = activation

            tokens = torch.zeros(1, 1, dtype=torch.long, device=x.device)
            with (
                start_at_layer(loaded.bridge, layer, x),
                with_hooks(loaded.bridge, [(f"blocks.{layer}.attn.hook_q", capture)]),
                stop_after(loaded.bridge, layer),
            ):
                loaded.hf_model.base_model(input_ids=tokens, use_cache=False)
            q = captured["q"][0, 0]  # [n_heads, d_head]
            for layer_, head in heads:
                if layer_ != layer:
                    continue
                for j in range(q.shape[-1]):
                    (grad,) = torch.autograd.grad(q[head, j], x, retain_graph=True)
                    rows.append(grad.reshape(-1).double().cpu())
    jacobian = torch.stack(rows)  # [heads * d_head, d_model]
    _, s, vh = torch.linalg.svd(jacobian, full_matrices=False)
    keep = s > s.max() * max(jacobian.shape) * 1e-6
    return vh[keep].T.float()
