# (jaxtyping shape strings such as "row vocab" are not forward references)
"""Metrics shared by every analysis: logit differences, normalised effects, patching metrics.

Conventions (PAPERS.md, "Common vocabulary"):

- LD, the logit difference, is ``logit[correct] - logit[incorrect]`` at the position
  where the answer is predicted.
- The normalised effect of a patch is ``(value - base) / (source - base)``
  (:func:`normalized_effect`): the fraction of the gap between the unpatched base and
  source runs that the patch moves the base run. Patching clean activations into a
  corrupted run, 1 = fully restored; the mirror direction (corrupt into clean) reads
  1 = fully broken. Every output states which direction it used.

Confidence intervals are :mod:`circuit_repro.engine.stats` (one bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int

# A patching metric: logits read at each row's answer position ``[rows, vocab]`` and
# each row's prompt index ``[rows]`` -> one value per row ``[rows]`` (see below).
Metric = Callable[
    [Float[torch.Tensor, "row vocab"], Int[torch.Tensor, " row"]], Float[torch.Tensor, " row"]
]

if TYPE_CHECKING:
    import pandas as pd

    # Anything with - and /: a number, an array, a tensor or a table column.
    Values = float | np.ndarray | torch.Tensor | pd.Series


def metric_name(metric: Metric) -> str:
    """The name a result table records for ``metric`` (its ``name``, else its type)."""
    return getattr(metric, "name", type(metric).__name__)


def logit_difference(
    logits: Float[torch.Tensor, "row vocab"],
    correct_ids: Int[torch.Tensor, " row"],
    wrong_ids: Int[torch.Tensor, " row"],
) -> Float[torch.Tensor, " row"]:
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


def normalized_effect(value: Values, base: Values, source: Values) -> Values:
    """Fraction of the base-to-source gap of a metric that a patch covers.

    ``(value - base) / (source - base)``, where ``base`` and ``source`` are the metric
    on the unpatched base and source runs and ``value`` on the patched base run: 0 =
    the base run's value, 1 = the source run's. Patching clean into corrupt (``base`` =
    corrupt, ``source`` = clean), 1 means the patch restores the clean behaviour
    (Wang et al. 2022; PAPERS.md, "Common vocabulary"). The mirror direction of
    Merullo et al. 2023 (corrupt patched into clean) passes ``base`` = clean and
    ``source`` = corrupt: 1 means the patch fully breaks the behaviour.
    """
    return (value - base) / (source - base)


# ----------------------------------------------------------------- patching metrics
#
# A patching metric maps the logits read at each row's answer position to one value
# per row. Rows may stack several variants of the same prompts, so each row also
# carries the index of its prompt (``prompt_index``), through which the metric finds
# that prompt's answer tokens or reference distribution.


class LogitDiffMetric:
    """Per-row ``logit[correct] - logit[wrong]`` for each prompt's answer pair."""

    name = "logit_diff"

    def __init__(
        self, correct_ids: Int[torch.Tensor, " prompt"], wrong_ids: Int[torch.Tensor, " prompt"]
    ):
        self.correct_ids = torch.as_tensor(correct_ids)
        self.wrong_ids = torch.as_tensor(wrong_ids)

    def __call__(
        self, logits: Float[torch.Tensor, "row vocab"], prompt_index: Int[torch.Tensor, " row"]
    ) -> Float[torch.Tensor, " row"]:
        """``logits``: ``[rows, vocab]``; ``prompt_index``: ``[rows]`` -> ``[rows]``."""
        device = logits.device
        correct = self.correct_ids.to(device)[prompt_index]
        wrong = self.wrong_ids.to(device)[prompt_index]
        return logit_difference(logits, correct, wrong)


class AnswerProbabilityMetric:
    """Per-row probability of each prompt's correct answer token."""

    name = "answer_prob"

    def __init__(self, correct_ids: Int[torch.Tensor, " prompt"]):
        self.correct_ids = torch.as_tensor(correct_ids)

    def __call__(
        self, logits: Float[torch.Tensor, "row vocab"], prompt_index: Int[torch.Tensor, " row"]
    ) -> Float[torch.Tensor, " row"]:
        rows = torch.arange(logits.shape[0], device=logits.device)
        correct = self.correct_ids.to(logits.device)[prompt_index]
        return torch.softmax(logits.float(), dim=-1)[rows, correct]


class KLDivergenceMetric:
    """Per-row ``KL(reference || patched)`` of the next-token distributions.

    ``reference_logits`` (``[n_prompts, vocab]``) are usually the clean run's logits
    at the answer position; 0 means the patched run predicts exactly like it.
    """

    name = "kl_divergence"

    def __init__(self, reference_logits: Float[torch.Tensor, "prompt vocab"]):
        self.reference_logprobs = torch.log_softmax(reference_logits.double(), dim=-1)

    def __call__(
        self, logits: Float[torch.Tensor, "row vocab"], prompt_index: Int[torch.Tensor, " row"]
    ) -> Float[torch.Tensor, " row"]:
        reference = self.reference_logprobs.to(logits.device)[prompt_index]
        patched = torch.log_softmax(logits.double(), dim=-1)
        return (reference.exp() * (reference - patched)).sum(dim=-1).to(logits.dtype)
