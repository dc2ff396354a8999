"""Multiple-choice two-digit addition in the letter format of the MCQA task.

The post-training task of the training-dynamics paper (Park, Jeong and Kang 2025,
"Thinking Sparks!", who post-train on reasoning data) and the fine-tuning data that
teaches small models the letter format the MCQA paper (Lieberum et al. 2023) analyses::

    Question: What is 23 + 48?
    A. 70
    B. 71
    C. 81
    D. 61
    Answer:                                   ->  " B"

Why addition: it has unlimited questions, so the questions a model is trained on and
those it is tested on can be disjoint (:func:`arithmetic_items` splits them), the
distractors can be made close (the sum +-1, +-2, +-10, a carry forgotten), and every
option has two digits, so all prompts of a tokenizer have one length and batches need
no padding. Records are MCQA records (:func:`~circuit_repro.tasks.mcqa.generate_mcqa`,
with its label mutations as counterfactuals) whose ``task`` is ``mc_arithmetic``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from circuit_repro.tasks.mcqa import Item, generate_mcqa

TASK_NAME = "mc_arithmetic"

#: Operands are drawn from this range, so every sum and distractor has two digits.
OPERANDS = range(10, 50)
#: Share of the questions held out for testing (never trained on).
TEST_SHARE = 0.2
#: Seed of the train/test split: fixed, so every run and every model splits alike.
SPLIT_SEED = 20250925

Split = Literal["train", "test"]


def _distractors(total: int, rng: random.Random) -> tuple[str, str, str]:
    """Three distinct two-digit wrong sums close to ``total``."""
    near = [total + d for d in (-10, -2, -1, 1, 2, 10) if 10 <= total + d <= 99]
    return tuple(str(x) for x in rng.sample(near, 3))  # type: ignore[return-value]


def arithmetic_items(split: Split) -> list[Item]:
    """Every question of one split: ``(question, correct sum, three distractors)``.

    The questions ``a + b`` (both operands in :data:`OPERANDS`, ordered pairs) are
    dealt into train and test by a fixed seeded shuffle, :data:`TEST_SHARE` to test;
    the two splits share no question (``a + b`` and ``b + a`` count as different).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(SPLIT_SEED)
    pairs = [(a, b) for a in OPERANDS for b in OPERANDS]
    rng.shuffle(pairs)
    n_test = round(TEST_SHARE * len(pairs))
    chosen = pairs[:n_test] if split == "test" else pairs[n_test:]
    return [
        (f"What is {a} + {b}?", str(a + b), _distractors(a + b, random.Random(f"{a}+{b}")))
        for a, b in chosen
    ]


def generate_mc_arithmetic(
    tokenizer: Any,
    n_prompts: int,
    seed: int,
    min_prompts: int | None = None,
    split: Split = "test",
) -> list[dict[str, Any]]:
    """Seeded multiple-choice addition prompts from one split (MCQA records; see
    :func:`~circuit_repro.tasks.mcqa.generate_mcqa` for the fields and the label
    mutations). The analyses read the ``test`` split; fine-tuning reads ``train``."""
    return generate_mcqa(
        tokenizer,
        n_prompts,
        seed,
        min_prompts=min_prompts,
        items=arithmetic_items(split),
        task_name=TASK_NAME,
    )
