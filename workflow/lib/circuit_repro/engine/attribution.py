"""Attribution patching (AtP): every component's patching effect from one gradient.

Activation patching (:mod:`circuit_repro.engine.patching`) needs one forward pass per
component. :func:`attribution_patching` (AtP; Nanda 2023, "Attribution patching"; Syed,
Rager and Conmy 2023; Kramár et al. 2024, "AtP*") estimates all of them at once: the
effect of patching component ``c`` from the *source* run into the *base* run is
estimated to first order as ``sum_elements (a_c(source) - a_c(base)) * d metric / d
a_c``, the gradient taken on the base run. One source forward pass, one base forward
and one backward pass score every component, whatever their number. (AtP*'s QK fix and
GradDrop are not implemented.) :func:`compare_with_exact` checks the estimate against
exact patching on a sample (rank correlation).

The same first-order idea applied to the edges between components is EAP / EAP-IG
(:mod:`circuit_repro.engine.edges`); keeping the top-scoring nodes or edges and
measuring what they recover is :mod:`circuit_repro.engine.circuits`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, cache_activations
from circuit_repro.engine.metrics import Metric, metric_name
from circuit_repro.engine.patching import PatchingRuns, patching_sweep, prompt_metric

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel


def prompt_chunks(n_prompts: int, batch_size: int | None) -> list[slice]:
    """Consecutive prompt ranges of at most ``batch_size`` prompts (all at once if None)."""
    size = n_prompts if batch_size is None else max(1, batch_size)
    return [slice(start, min(start + size, n_prompts)) for start in range(0, n_prompts, size)]


def probe_hook(name: str, probes: dict, values: dict):
    """Forward hook adding a zero "probe" that requires grad: d metric / d probe is the
    gradient with respect to the activation, whether or not the weights require grad."""

    def hook(activation, hook):
        probe = torch.zeros_like(activation, requires_grad=True)
        probes[name] = probe
        values[name] = activation.detach()
        return activation + probe

    return hook


def _reduce_to_selector(product: torch.Tensor, selector_length: int) -> np.ndarray:
    """Sum ``product`` (``[batch, ...]``) over the batch and over every axis a
    component selector does not address: ``[pos]`` for stream kinds, ``[pos, index]`` for
    heads/neurons, ``[head, query_pos]`` for patterns."""
    trailing = tuple(range(selector_length, product.dim()))
    if trailing:
        product = product.sum(dim=trailing)
    return product.sum(dim=0).double().cpu().numpy()


def attribution_patching(
    loaded: LoadedModel,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """First-order estimate of patching each component from source into base (AtP).

    For component ``c`` with activation ``a_c`` (the elements its :class:`Component`
    selects: one head's ``z``, one position of the residual stream, one neuron ...)::

        score_c = sum over c's elements and prompts of
                  (a_c(source) - a_c(base)) * d metric_mean / d a_c |base

    where ``metric_mean`` is the metric averaged over prompts, so ``score_c``
    estimates how much patching ``c`` changes that average (Nanda 2023; Syed et al.
    2023; Kramár et al. 2024). Exact patching of ``c`` (:func:`patching_sweep`) is the
    quantity being approximated; the estimate is exact for a metric linear in ``a_c``.

    Cost: one forward pass on the source prompts (caching the activations), one
    forward and one backward pass on the base prompts, for any number of components
    and any mix of kinds (:data:`circuit_repro.engine.hooks.KINDS`).

    Args:
        loaded: A :class:`circuit_repro.models.LoadedModel` with a bridge.
        runs: Base/source tokens and read positions.
        components: Components to score (position None = summed over all positions).
        metric: Per-row metric, see :mod:`circuit_repro.engine.metrics`.
        batch_size: Prompts per forward pass (all at once if None); the scores do not
            depend on it.

    Returns:
        One row per component (input order) with the columns of
        :func:`patching_sweep`: ``kind, layer, index, position, value, metric,
        direction``, plus ``score`` (the estimated change of the metric), ``base_value``
        (the metric on the unpatched base run) and ``method = "atp"``. ``value =
        base_value + score`` estimates the patched metric, which is what
        :func:`patching_sweep`'s ``value`` measures.
    """
    if not components:
        raise ValueError("no components to score")
    bridge = loaded.bridge
    names = sorted({c.hook_name for c in components})
    selector_length = {c.hook_name: len(c.selector()) for c in components}
    tables: dict[str, np.ndarray] = {}
    base_total = 0.0
    for rows in prompt_chunks(runs.n_prompts, batch_size):
        with torch.no_grad(), cache_activations(bridge, names) as source:
            logits_at(
                loaded, runs.source_tokens[rows], runs.read_positions[rows], runs.mask_rows(rows)
            )
        probes: dict[str, torch.Tensor] = {}
        base: dict[str, torch.Tensor] = {}
        hooks = [(name, probe_hook(name, probes, base)) for name in names]
        with torch.enable_grad(), bridge.hooks(fwd_hooks=hooks):
            per_prompt = prompt_metric(loaded, runs.base_tokens[rows], runs, metric, rows)
            objective = per_prompt.sum() / runs.n_prompts  # its share of metric_mean
            grads = torch.autograd.grad(objective, [probes[n] for n in names], allow_unused=True)
        base_total += per_prompt.detach().double().sum().item()
        for name, grad in zip(names, grads, strict=True):
            if grad is None:  # the activation does not reach the metric
                grad = torch.zeros_like(base[name])
            product = (source[name].to(grad.dtype) - base[name]) * grad  # [batch, ...]
            table = _reduce_to_selector(product, selector_length[name])
            tables[name] = tables[name] + table if name in tables else table

    scores = np.array([tables[c.hook_name][c.selector()[1:]].sum() for c in components])
    base_value = base_total / runs.n_prompts
    table = pd.DataFrame([c.label() for c in components])
    table["value"] = base_value + scores
    table["metric"] = metric_name(metric)
    table["direction"] = runs.direction
    table["score"] = scores
    table["base_value"] = base_value
    table["method"] = "atp"
    return table


def compare_with_exact(
    loaded: LoadedModel,
    runs: PatchingRuns,
    components: Sequence[Component],
    metric: Metric,
    sample: int = 32,
    seed: int = 0,
) -> dict[str, float | int]:
    """Check AtP against exact activation patching on a seeded random sample.

    Draws ``min(sample, len(components))`` components without replacement
    (``numpy.random.default_rng(seed)``), scores them with :func:`attribution_patching`
    and patches them exactly with :func:`patching_sweep`, and compares the AtP scores
    with the exact changes of the metric (patched - base).

    Returns:
        ``{"spearman", "pearson", "n", "mean_abs_error", "mean_abs_exact"}``;
        correlations are NaN when either side is constant.
    """
    from scipy import stats

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(components), size=min(sample, len(components)), replace=False)
    sampled = [components[i] for i in sorted(chosen)]
    atp = attribution_patching(loaded, runs, sampled, metric)
    exact = patching_sweep(loaded, runs, sampled, metric, progress=False)
    estimated = atp["score"].to_numpy()
    measured = exact["value"].to_numpy() - atp["base_value"].to_numpy()
    constant = np.ptp(estimated) == 0 or np.ptp(measured) == 0 or len(sampled) < 2
    return {
        "spearman": math.nan if constant else float(stats.spearmanr(estimated, measured)[0]),
        "pearson": math.nan if constant else float(stats.pearsonr(estimated, measured)[0]),
        "n": len(sampled),
        "mean_abs_error": float(np.abs(estimated - measured).mean()),
        "mean_abs_exact": float(np.abs(measured).mean()),
    }
