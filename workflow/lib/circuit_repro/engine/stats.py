"""Percentile-bootstrap confidence intervals: one resampling scheme for every analysis.

Every interval in the claims tables comes from :func:`bootstrap`: items (prompts, or
heads for a correlation) are resampled with replacement from a seeded generator, the
statistic is recomputed on each resample, and the central quantiles of those values
bound the interval (Efron & Tibshirani 1993, ch. 13). Several groups of items (two
tasks' prompts, say) are resampled independently within each draw.

The draw order is part of the result: for a given seed, resample ``r`` draws group 0's
indices, then group 1's, ... before resample ``r + 1``. The mean of one group has a
vectorised path (:func:`bootstrap_ci`) that draws all resamples' indices at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def percentile_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap ``samples`` (NaN, NaN if empty)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap(
    statistic: Callable[..., float | np.ndarray | None],
    sizes: Sequence[int],
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap distribution of ``statistic`` over independently resampled groups.

    Args:
        statistic: Called once per resample with one index array per group (each of
            that group's size, drawn with replacement); returns the statistic (a number,
            or a vector of several statistics computed from the same resample), or None
            when it is undefined on that resample (e.g. a correlation of constant
            values), in which case the resample is skipped.
        sizes: Number of items in each group.
        n_resamples: Number of resamples drawn.
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``[kept resamples]`` values of the statistic (``[kept resamples, k]`` for a
        vector of ``k`` statistics).
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        value = statistic(*(rng.integers(0, size, size) for size in sizes))
        if value is not None:
            values.append(np.asarray(value, dtype=np.float64))
    return np.stack(values) if values else np.empty(0)


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over the items of ``values``.

    The mean (the common case) is vectorised: all resamples' indices are drawn in one
    call, ``[n_resamples, n_items]``. Other statistics are evaluated per resample.

    Returns:
        ``(low, high)`` of the central ``confidence`` interval; NaNs for no items.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(n_resamples, values.size))
    if statistic is np.mean:
        samples = values[indices].mean(axis=1)
    else:
        samples = np.array([statistic(values[row]) for row in indices])
    return percentile_interval(samples, confidence)


def estimate_with_interval(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``statistic`` on every item index ``0..n-1`` and its
    percentile bootstrap CI over resampled indices (:func:`bootstrap`)."""
    estimate = statistic(np.arange(n))
    samples = bootstrap(statistic, [n], n_resamples, seed)
    low, high = percentile_interval(samples, confidence)
    return float(estimate), low, high
