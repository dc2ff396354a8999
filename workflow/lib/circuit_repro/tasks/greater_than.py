"""Greater-than prompts, after Hanna, Liu and Variengien (2023).

Hanna, Liu and Variengien, "How does GPT-2 compute greater-than?: Interpreting
mathematical abilities in a pre-trained language model", arXiv:2305.00586; the same
prompts are used by Dunefsky, Chlenski and Nanda, "Transcoders Find Interpretable LLM
Feature Circuits", arXiv:2406.11944. A prompt names a start year and asks for an end
year in the same century, which must be later::

    The war lasted from the year 1732 to the year 17

The start year is ``17YY`` with ``YY`` between 02 and 98, and the event noun is drawn
from :data:`NOUNS` ("war", "siege", "expedition", ...). What the model predicts next
depends on how its tokenizer writes numbers, detected once per tokenizer:

* ``"two_digit"`` (GPT-2 style): ``"1732"`` is ``"17"`` + ``"32"``, so the next token is
  a two-digit year. The candidates are ``"00"``..``"99"`` (those that are single tokens),
  correct = the years greater than YY, incorrect = the years up to and including YY.
  ``answer`` = YY+1 (the earliest correct year), ``wrong_answer`` = YY.
* ``"per_digit"`` (SmolLM2, Gemma, Qwen: every digit is its own token): the next token
  is the end year's tens digit. A tens digit greater than YY's tens digit Y1 guarantees
  a later year and a smaller one an earlier year, but the equal digit can go either way
  (``1732`` -> ``173?``), so it is left out of the candidates altogether: candidates =
  the digits other than Y1, correct = the digits greater than Y1, incorrect = those
  smaller. Only YY from 10 to 89 is used, so both sets are non-empty.
  ``answer`` = Y1+1, ``wrong_answer`` = Y1-1 (the nearest decade on each side).

The prompt text is the same in both cases and ends with ``"17"`` with no trailing space,
because the end year's digits follow it directly. The paper's metric is the probability
difference (:func:`probability_difference`): the total probability of the correct
candidates minus that of the incorrect ones.

Each record carries Hanna et al.'s corrupted run as the counterfactual ``"01"``: the same
prompt with the start year 1701, after which (almost) every end year is later, so it
removes the information about YY. It has the clean prompt's token length and differs
only in the tokens of YY. Like IOI's ``abc`` run, it has no answer of its own; patching
scores both runs with the clean record's answer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from circuit_repro.tasks.base import (
    END_ROLE,
    CharSpan,
    check_enough,
    encode_with_roles,
    is_single_token,
    required_count,
    single_token_id,
)

TASK_NAME = "greater_than"

#: Prompt template; ``{yy}`` is the start year's last two digits.
TEMPLATE = "The {noun} lasted from the year 17{yy} to the year 17"

#: Events that last for a span of years, used as the sentence's subject. Nouns may be
#: several tokens: positions are computed on the actual tokenization.
NOUNS: tuple[str, ...] = (
    "war", "siege", "drought", "famine", "expedition", "voyage", "reign", "dynasty",
    "rebellion", "revolution", "occupation", "truce", "alliance", "embargo", "blockade",
    "campaign", "crusade", "pilgrimage", "feud", "plague",
)  # fmt: skip

#: Start years (last two digits) as in Hanna et al.: 01 is reserved for the corrupted run
#: and 99 has no later year in the century.
YEARS: tuple[int, ...] = tuple(range(2, 99))

#: Start years usable with per-digit tokenizers: a tens digit of 0 leaves no smaller
#: (incorrect) digit and 9 no greater (correct) one.
PER_DIGIT_YEARS: tuple[int, ...] = tuple(range(10, 90))

#: The corrupted run's start year.
CORRUPT_YEAR = 1

TWO_DIGIT = "two_digit"
PER_DIGIT = "per_digit"

#: Start year used to detect how a tokenizer writes years.
_PROBE_YEAR = 32

#: How many (noun, year) pairs one record slot tries before giving up.
MAX_ATTEMPTS_PER_RECORD = 20


def render_prompt(noun: str, year: int) -> tuple[str, dict[str, CharSpan]]:
    """Fill :data:`TEMPLATE` and record where the start year's parts are.

    Args:
        noun: The event noun, e.g. ``"war"``.
        year: The start year's last two digits, 0..99.

    Returns:
        The prompt and the character spans ``CENTURY`` (the ``"17"`` of the start year)
        and ``YY`` (its last two digits).
    """
    prompt = TEMPLATE.format(noun=noun, yy=f"{year:02d}")
    century = prompt.index(" 17") + 1
    return prompt, {"CENTURY": (century, century + 2), "YY": (century + 2, century + 4)}


def _ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _single_ids(tokenizer: Any, texts: Sequence[str]) -> list[int] | None:
    """The single-token ids of ``texts``, or None if one of them is not a single token."""
    if not all(is_single_token(tokenizer, text) for text in texts):
        return None
    return [single_token_id(tokenizer, text) for text in texts]


def detect_tokenization(tokenizer: Any) -> str | None:
    """Decide how ``tokenizer`` continues ``"... to the year 17"`` with an end year.

    Args:
        tokenizer: A Hugging Face tokenizer.

    Returns:
        :data:`TWO_DIGIT` when ``"17"`` + ``"45"`` is the prompt's tokens plus the single
        token ``"45"``, :data:`PER_DIGIT` when it is the prompt's tokens plus ``"4"`` and
        ``"5"``, and None when it is neither (e.g. ``"1745"`` merges into one token).
    """
    prompt, _ = render_prompt(NOUNS[0], _PROBE_YEAR)
    prompt_ids = _ids(tokenizer, prompt)
    continued = _ids(tokenizer, prompt + "45")
    two = _single_ids(tokenizer, ["45"])
    if two is not None and continued == prompt_ids + two:
        return TWO_DIGIT
    digits = _single_ids(tokenizer, ["4", "5"])
    if digits is not None and continued == prompt_ids + digits:
        return PER_DIGIT
    return None


def _candidate_sets(
    tokenization: str, year: int, two_digit_candidates: Sequence[str]
) -> tuple[list[str], list[str], list[str], str, str] | None:
    """Candidates, correct, incorrect, answer and wrong answer for one start year.

    Returns None when the year cannot be scored (its token is not a candidate, or one
    of the two sets would be empty).
    """
    if tokenization == TWO_DIGIT:
        candidates = list(two_digit_candidates)
        correct = [c for c in candidates if int(c) > year]
        incorrect = [c for c in candidates if int(c) <= year]
        wrong = f"{year:02d}"
        if not correct or wrong not in candidates:
            return None
        return candidates, correct, incorrect, correct[0], wrong
    tens = year // 10
    if not 1 <= tens <= 8:
        return None
    candidates = [str(d) for d in range(10) if d != tens]
    correct = [str(d) for d in range(tens + 1, 10)]
    incorrect = [str(d) for d in range(tens)]
    return candidates, correct, incorrect, str(tens + 1), str(tens - 1)


def _make_record(
    tokenizer: Any,
    record_index: int,
    noun: str,
    year: int,
    tokenization: str,
    two_digit_candidates: Sequence[str],
) -> dict[str, Any] | None:
    """Build the record for one (noun, year); None when a tokenization check fails."""
    sets = _candidate_sets(tokenization, year, two_digit_candidates)
    if sets is None:
        return None
    candidates, correct, incorrect, answer, wrong_answer = sets

    encoded = []
    for start_year in (year, CORRUPT_YEAR):
        prompt, spans = render_prompt(noun, start_year)
        role_spans: dict[str, CharSpan | None] = {**spans, END_ROLE: None}
        input_ids, roles = encode_with_roles(tokenizer, prompt, role_spans)
        digits = f"{start_year:02d}"
        yy_tokens = [digits] if tokenization == TWO_DIGIT else list(digits)
        expected = _single_ids(tokenizer, yy_tokens)
        found = input_ids[roles["YY"] : roles["YY"] + len(yy_tokens)]
        if expected is None or found != expected:
            return None
        encoded.append((prompt, input_ids, roles))
    (prompt, clean_ids, roles), (cf_prompt, cf_ids, cf_roles) = encoded
    if len(clean_ids) != len(cf_ids) or roles != cf_roles:
        return None

    # The answer must follow "17" as a token of its own, not merge with it.
    prompt_ids = _ids(tokenizer, prompt)
    for continuation in (answer, wrong_answer):
        if _ids(tokenizer, prompt + continuation) != [
            *prompt_ids,
            single_token_id(tokenizer, continuation),
        ]:
            return None

    return {
        "task": TASK_NAME,
        "id": record_index,
        "prompt": prompt,
        "answer": answer,
        "wrong_answer": wrong_answer,
        "candidates": candidates,
        "correct": correct,
        "incorrect": incorrect,
        "year": year,
        "noun": noun,
        "tokenization": tokenization,
        "roles": roles,
        "counterfactuals": {
            "01": {"prompt": cf_prompt, "year": CORRUPT_YEAR, "roles": cf_roles},
        },
    }


def generate_greater_than(
    tokenizer: Any, n_prompts: int, seed: int, min_prompts: int | None = None
) -> list[dict[str, Any]]:
    """Generate seeded greater-than prompts (Hanna et al. 2023) for a tokenizer.

    The tokenizer's number writing is detected first (:func:`detect_tokenization`). Start
    years are dealt from a seeded shuffle of the usable years (:data:`YEARS` for
    two-digit tokenizers, :data:`PER_DIGIT_YEARS` for per-digit ones), reshuffled after
    each pass, so years are used as evenly as ``n_prompts`` allows; each record's noun
    is drawn from :data:`NOUNS`. A (noun, year) pair whose tokenization check fails (a
    year's digits are not the expected tokens, the ``"01"`` run's length differs, or the
    answer merges with ``"17"``) is replaced by the next pair, up to
    :data:`MAX_ATTEMPTS_PER_RECORD` times; ids stay contiguous.

    Each record is a JSON-serialisable dict::

        {"task": "greater_than", "id": int, "prompt": str,
         "answer": str, "wrong_answer": str,
         "candidates": [str, ...], "correct": [str, ...], "incorrect": [str, ...],
         "year": int, "noun": str, "tokenization": "two_digit" | "per_digit",
         "roles": {"CENTURY": int, "YY": int, "END": int},
         "counterfactuals": {"01": {"prompt": str, "year": 1, "roles": {...}}}}

    For the start year 1732 a two-digit tokenizer gets ``answer="33"``,
    ``wrong_answer="32"``, candidates ``"00"..."99"`` and correct ``"33"..."99"``; a
    per-digit one gets ``answer="4"``, ``wrong_answer="2"``, candidates all digits but
    ``"3"`` and correct ``"4"..."9"``. Answers carry no leading space.

    Roles index ``tokenizer(prompt)["input_ids"]`` with default special tokens:
    ``CENTURY`` is the first token of the start year's ``"17"`` (``" 17"`` for GPT-2
    style tokenizers, ``"1"`` for per-digit ones), ``YY`` the first token of its last
    two digits (the two-digit token, or the tens digit) and ``END`` the final ``"7"`` or
    ``" 17"``. The ``"01"`` counterfactual has the same roles and length.

    Args:
        tokenizer: A fast Hugging Face tokenizer of the model under study.
        n_prompts: Number of records to generate.
        seed: Seed for :class:`random.Random`; the same seed and tokenizer give the same
            records.
        min_prompts: Fewest records acceptable; defaults to ``n_prompts``.

    Returns:
        Between ``min_prompts`` and ``n_prompts`` records, ids ``0..len-1``.

    Raises:
        ValueError: If ``n_prompts`` < 1 or ``min_prompts`` is not in ``[0, n_prompts]``.
        TaskTooSmallError: If fewer than ``min_prompts`` records can be made, e.g.
            because the tokenizer writes ``"1745"`` neither as ``"17"`` + ``"45"`` nor
            digit by digit, or (two-digit tokenizers) ``"01"`` is not a single token.
    """
    required = required_count(n_prompts, min_prompts)

    tokenization = detect_tokenization(tokenizer)
    two_digit_candidates = tuple(
        f"{k:02d}" for k in range(100) if is_single_token(tokenizer, f"{k:02d}")
    )
    usable = True
    if tokenization is None:
        detail = "the end year after '17' is neither one two-digit token nor single digits"
        usable = False
    elif tokenization == TWO_DIGIT:
        detail = f"two-digit years; {len(two_digit_candidates)} of '00'..'99' are single tokens"
        if f"{CORRUPT_YEAR:02d}" not in two_digit_candidates:
            detail += f", but not '{CORRUPT_YEAR:02d}', the corrupted run's start year"
            usable = False
    else:
        detail = "per-digit years"
    if tokenization is None or not usable:
        # None can be made: [] if none are required, else a TaskTooSmallError.
        return check_enough(TASK_NAME, tokenizer, [], n_prompts, required, detail)

    years = list(YEARS if tokenization == TWO_DIGIT else PER_DIGIT_YEARS)
    rng = random.Random(seed)
    deck: list[int] = []
    records: list[dict[str, Any]] = []
    for _slot in range(n_prompts):
        for _attempt in range(MAX_ATTEMPTS_PER_RECORD):
            if not deck:
                deck = rng.sample(years, len(years))
            year = deck.pop()
            noun = rng.choice(NOUNS)
            record = _make_record(
                tokenizer, len(records), noun, year, tokenization, two_digit_candidates
            )
            if record is not None:
                records.append(record)
                break

    return check_enough(TASK_NAME, tokenizer, records, n_prompts, required, detail)


def probability_difference(probs: Any, record: Mapping[str, Any]) -> Any:
    """Hanna et al.'s metric: total probability of correct minus incorrect end years.

    ``sum(p(c) for c in correct) - sum(p(c) for c in candidates not in correct)``, where
    ``p`` are next-token probabilities at the prompt's last token (softmax over the whole
    vocabulary, not renormalised over the candidates). Per-digit records leave the
    ambiguous equal tens digit out of ``candidates``, so it counts on neither side. A
    value of 1 means all probability is on later years, -1 all on earlier (or equal)
    ones.

    Args:
        probs: Either a mapping candidate string -> probability (every candidate of the
            record must be present), or a tensor/array whose last dimension is aligned
            with ``record["candidates"]`` (a batch of such rows is allowed, e.g. shape
            ``[batch, n_candidates]`` for records sharing their candidates).
        record: A greater-than record (``candidates`` and ``correct``).

    Returns:
        A float for a mapping or a 1-D input; for a batched tensor, one value per row.

    Raises:
        KeyError: If a mapping lacks one of the record's candidates.
        ValueError: If a tensor's last dimension is not the number of candidates.
    """
    candidates = list(record["candidates"])
    correct = set(record["correct"])
    if isinstance(probs, Mapping):
        return float(
            sum(probs[c] for c in candidates if c in correct)
            - sum(probs[c] for c in candidates if c not in correct)
        )
    if not hasattr(probs, "shape"):  # a plain sequence
        probs = np.asarray(probs, dtype=float)
    if probs.shape[-1] != len(candidates):
        raise ValueError(
            f"probabilities have {probs.shape[-1]} entries in the last dimension, but the "
            f"record has {len(candidates)} candidates"
        )
    signs = [1.0 if c in correct else -1.0 for c in candidates]
    if hasattr(probs, "new_tensor"):  # a torch tensor: keep its dtype and device
        weighted = probs * probs.new_tensor(signs)
    else:
        weighted = np.asarray(probs, dtype=float) * np.asarray(signs)
    result = weighted.sum(-1)
    return float(result) if result.ndim == 0 else result
