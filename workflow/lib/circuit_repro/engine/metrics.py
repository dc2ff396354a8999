"""Metrics shared by every analysis: logit differences, normalised effects, bootstrap CIs.

Conventions (PAPERS.md, "Common vocabulary"):

- LD, the logit difference, is ``logit[correct] - logit[incorrect]`` at the position
  where the answer is predicted.
- The normalised patching effect is ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)``
  when clean activations are patched into a corrupted run (1 = fully restored); the
  mirror form swaps clean and corrupt. Every output states which direction it used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def logit_difference(
    logits: torch.Tensor, correct_ids: torch.Tensor, wrong_ids: torch.Tensor
) -> torch.Tensor:
    """``logit[correct] - logit[wrong]`` per row.

    Args:
        logits: ``[batch, vocab]`` logits at the answer position.
        correct_ids: ``[batch]`` token ids of the correct answers.
        wrong_ids: ``[batch]`` token ids of the incorrect answers.

    Returns:
        ``[batch]`` logit differences.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, correct_ids] - logits[rows, wrong_ids]


def normalized_effect(
    patched: torch.Tensor | float, clean: torch.Tensor | float, corrupt: torch.Tensor | float
) -> torch.Tensor | float:
    """Fraction of the clean-vs-corrupt metric gap that a patch recovers.

    ``(patched - corrupt) / (clean - corrupt)``: 0 = the corrupted run's value,
    1 = the clean run's value. For the mirror direction (corrupt patched into clean,
    Merullo et al. 2023), call with ``clean`` and ``corrupt`` swapped.
    """
    return (patched - corrupt) / (clean - corrupt)


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over items.

    Items (prompts) are resampled with replacement ``n_resamples`` times with a seeded
    generator, so the interval is reproducible.

    Returns:
        ``(low, high)`` bounds of the central ``confidence`` interval.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(n_resamples, values.size))
    if statistic is np.mean:  # vectorised fast path for the common case
        stats = values[indices].mean(axis=1)
    else:
        stats = np.array([statistic(values[row]) for row in indices])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


# ----------------------------------------------------------------- patching metrics
#
# A patching metric maps the logits read at each row's answer position to one value
# per row. Rows may stack several variants of the same prompts, so each row also
# carries the index of its prompt (``prompt_index``), through which the metric finds
# that prompt's answer tokens or reference distribution.


class LogitDiffMetric:
    """Per-row ``logit[correct] - logit[wrong]`` for each prompt's answer pair."""

    name = "logit_diff"

    def __init__(self, correct_ids: torch.Tensor, wrong_ids: torch.Tensor):
        self.correct_ids = torch.as_tensor(correct_ids)
        self.wrong_ids = torch.as_tensor(wrong_ids)

    def __call__(self, logits: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        """``logits``: ``[rows, vocab]``; ``prompt_index``: ``[rows]`` -> ``[rows]``."""
        device = logits.device
        correct = self.correct_ids.to(device)[prompt_index]
        wrong = self.wrong_ids.to(device)[prompt_index]
        return logit_difference(logits, correct, wrong)


class AnswerProbabilityMetric:
    """Per-row probability of each prompt's correct answer token."""

    name = "answer_prob"

    def __init__(self, correct_ids: torch.Tensor):
        self.correct_ids = torch.as_tensor(correct_ids)

    def __call__(self, logits: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        correct = self.correct_ids.to(logits.device)[prompt_index]
        return torch.softmax(logits.float(), dim=-1)[rows, correct]


class KLDivergenceMetric:
    """Per-row ``KL(reference || patched)`` of the next-token distributions.

    ``reference_logits`` (``[n_prompts, vocab]``) are usually the clean run's logits
    at the answer position; 0 means the patched run predicts exactly like it.
    """

    name = "kl_divergence"

    def __init__(self, reference_logits: torch.Tensor):
        self.reference_logprobs = torch.log_softmax(reference_logits.double(), dim=-1)

    def __call__(self, logits: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        reference = self.reference_logprobs.to(logits.device)[prompt_index]
        patched = torch.log_softmax(logits.double(), dim=-1)
        return (reference.exp() * (reference - patched)).sum(dim=-1).to(logits.dtype)
