"""Paired recall and reasoning prompts with one surface form, after Fartale et al. (2025).

Fartale et al., "Disentangling Recall and Reasoning in Transformer Models through
Layer-wise Attention and Activation Analysis" (arXiv:2510.03366), contrast prompts that
need a memorised fact (*recall*) with prompts whose answer follows from facts given in
the context (*reasoning*). To compare the two fairly, both families here share one
skeleton, two context facts followed by a query about a third person::

    We know that {A} lives in {X} and {C} lives in {Y}. {B} lives in the {KIND} city of
    {ENTITY}, the city of

* recall: ``KIND`` = ``capital`` and ``ENTITY`` is a country Z; the answer is Z's capital,
  which appears nowhere in the prompt and must come from memory::

      We know that Alice lives in Paris and Carol lives in Rome. Bob lives in the
      capital city of Spain, the city of                                   ->  " Madrid"

* reasoning: ``KIND`` = ``home`` and ``ENTITY`` is one of the two context people; the
  answer is that person's city, derivable only by combining the query with the context
  (no world knowledge helps, since the people and their homes are made up)::

      We know that Alice lives in Paris and Carol lives in Rome. Bob lives in the
      home city of Alice, the city of                                      ->  " Paris"

Records come in pairs (same ``pair_id``) drawn from the same names, context cities and
country, so the two prompts of a pair differ only in the ``KIND`` word and ``ENTITY``
and have the same token length. All names, cities and countries are single tokens, and
so are ``capital`` and ``home``. Capitals come from the ``capital_of`` relation of
``circuit_repro/data/facts.json``.

The reasoning query refers to the first context person in even pairs and the second in
odd pairs. Roles: ``SUBJECT`` (B), ``ENTITY`` (Z or the referent person's second
mention), ``CONTEXT_CITY`` (the city of the referent fact: the reasoning answer, and in
the recall record the same position, whose city is its ``wrong_answer``),
``CONTEXT_PERSON`` (the referent's first mention), ``OTHER_CITY`` (the other context
city; the reasoning ``wrong_answer``), ``KIND`` (``capital`` / ``home``) and ``END``. ``candidates`` are the same for both
records of a pair: the two context cities and Z's capital (sorted), so chance is 1/3 in
both families.

Counterfactual ``swap`` replaces one token and changes the answer: in recall the country
(at ``ENTITY``) becomes another country whose capital is not yet in the prompt; in
reasoning the referent's city (at ``CONTEXT_CITY``) becomes another city.
"""

from __future__ import annotations

import random
from typing import Any

from circuit_repro.tasks.base import (
    END_ROLE,
    CharSpan,
    check_enough,
    encode_with_roles,
    required_count,
    single_token_id,
    single_token_words,
)
from circuit_repro.tasks.facts import load_relations

TASK_NAME = "recall_reasoning"

#: The two families, in the order they appear within each pair.
FAMILIES: tuple[str, ...] = ("recall", "reasoning")

#: The word before "city of" in the query, per family.
KIND_WORDS: dict[str, str] = {"recall": "capital", "reasoning": "home"}

#: Prompt skeleton. Every slot follows a space, so each slot word is the single token
#: " Word" in context.
TEMPLATE = (
    "We know that {A} lives in {X} and {C} lives in {Y}. {B} lives in the {KIND} city of"
    " {ENTITY}, the city of"
)

#: First names for the three people of a prompt. Only names that are a single token
#: after a space are used.
NAMES: tuple[str, ...] = (
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Julia", "Kevin",
    "Laura", "Michael", "Nancy", "Peter", "Rachel", "Sarah", "Thomas", "Victoria", "William",
    "Jack", "Lucy", "Mary", "John", "Anna", "Paul", "Helen", "George", "Karen", "Daniel",
    "Linda",
)  # fmt: skip

#: Number of distinct countries a pair needs: the recall country and its swap.
_COUNTRIES_PER_PAIR = 2

#: How many times one pair is resampled when a tokenization check fails.
MAX_ATTEMPTS_PER_PAIR = 20


def _render(values: dict[str, str]) -> tuple[str, dict[str, CharSpan]]:
    """Fill :data:`TEMPLATE`; return the prompt and each slot's character span."""
    parts: list[str] = []
    spans: dict[str, CharSpan] = {}
    cursor = 0
    rest = TEMPLATE
    while "{" in rest:
        literal, rest = rest.split("{", 1)
        slot, rest = rest.split("}", 1)
        parts.append(literal)
        cursor += len(literal)
        spans[slot] = (cursor, cursor + len(values[slot]))
        parts.append(values[slot])
        cursor += len(values[slot])
    parts.append(rest)
    return "".join(parts), spans


def _encode(
    tokenizer: Any, values: dict[str, str], referent: int, token_ids: dict[str, int]
) -> tuple[str, list[int], dict[str, int]] | None:
    """Render and encode one prompt; None if a slot word is not its own token in context.

    ``referent`` (0 or 1) says which context fact the roles ``CONTEXT_CITY`` and
    ``CONTEXT_PERSON`` point at.
    """
    prompt, spans = _render(values)
    person_slot, city_slot = ("A", "X") if referent == 0 else ("C", "Y")
    other_city_slot = "Y" if referent == 0 else "X"
    role_slots = {
        "SUBJECT": "B",
        "ENTITY": "ENTITY",
        "CONTEXT_CITY": city_slot,
        "CONTEXT_PERSON": person_slot,
        "OTHER_CITY": other_city_slot,
        "KIND": "KIND",
    }
    role_spans: dict[str, CharSpan | None] = {
        role: spans[slot] for role, slot in role_slots.items()
    }
    role_spans[END_ROLE] = None
    input_ids, positions = encode_with_roles(tokenizer, prompt, role_spans)
    for role, slot in role_slots.items():
        if input_ids[positions[role]] != token_ids[values[slot]]:
            return None
    return prompt, input_ids, positions


def _pair(
    tokenizer: Any,
    rng: random.Random,
    pair_id: int,
    names: tuple[str, ...],
    capitals: dict[str, str],
    cities: tuple[str, ...],
    token_ids: dict[str, int],
) -> list[dict[str, Any]] | None:
    """Sample and build one recall/reasoning pair; None if a tokenization check fails."""
    referent = pair_id % 2
    person_a, person_c, subject = rng.sample(names, 3)
    country, swap_country = rng.sample(sorted(capitals), _COUNTRIES_PER_PAIR)
    capital, swap_capital = capitals[country], capitals[swap_country]
    pool = [city for city in cities if city not in (capital, swap_capital)]
    city_x, city_y, swap_city = rng.sample(pool, 3)
    context_city = (city_x, city_y)[referent]
    other_city = (city_y, city_x)[referent]
    referent_person = (person_a, person_c)[referent]
    base = {"A": person_a, "X": city_x, "C": person_c, "Y": city_y, "B": subject}

    recall_values = {**base, "KIND": KIND_WORDS["recall"], "ENTITY": country}
    reasoning_values = {**base, "KIND": KIND_WORDS["reasoning"], "ENTITY": referent_person}
    recall_swap_values = {**recall_values, "ENTITY": swap_country}
    reasoning_swap_values = dict(reasoning_values)
    reasoning_swap_values["X" if referent == 0 else "Y"] = swap_city

    prompts: list[str] = []
    roles: list[dict[str, int]] = []
    lengths: set[int] = set()
    for values in (recall_values, recall_swap_values, reasoning_values, reasoning_swap_values):
        encoded = _encode(tokenizer, values, referent, token_ids)
        if encoded is None:
            return None
        prompts.append(encoded[0])
        lengths.add(len(encoded[1]))
        roles.append(encoded[2])
    # All four prompts must align position by position for patching across them.
    if len(lengths) != 1 or any(role_map != roles[0] for role_map in roles):
        return None
    recall_prompt, recall_swap_prompt, reason_prompt, reason_swap_prompt = prompts
    recall_roles, recall_swap_roles, reason_roles, reason_swap_roles = roles

    candidates = sorted(" " + city for city in (city_x, city_y, capital))
    shared = {
        "task": TASK_NAME,
        "pair_id": pair_id,
        "candidates": candidates,
        "names": {"A": person_a, "C": person_c, "B": subject},
        "context_cities": [city_x, city_y],
        "referent": referent,
    }
    recall = {
        **shared,
        "family": "recall",
        "prompt": recall_prompt,
        "answer": " " + capital,
        "wrong_answer": " " + context_city,
        "correct": [" " + capital],
        "entity": country,
        "roles": recall_roles,
        "counterfactuals": {
            "swap": {
                "prompt": recall_swap_prompt,
                "answer": " " + swap_capital,
                "wrong_answer": " " + context_city,
                "entity": swap_country,
                "roles": recall_swap_roles,
            }
        },
    }
    reasoning = {
        **shared,
        "family": "reasoning",
        "prompt": reason_prompt,
        "answer": " " + context_city,
        "wrong_answer": " " + other_city,
        "correct": [" " + context_city],
        "entity": referent_person,
        "roles": reason_roles,
        "counterfactuals": {
            "swap": {
                "prompt": reason_swap_prompt,
                "answer": " " + swap_city,
                "wrong_answer": " " + other_city,
                "context_city": swap_city,
                "roles": reason_swap_roles,
            }
        },
    }
    return [recall, reasoning]


def generate_recall_reasoning(
    tokenizer: Any, n_prompts: int, seed: int, min_prompts: int | None = None
) -> list[dict[str, Any]]:
    """Generate seeded paired recall/reasoning prompts (Fartale et al. 2025).

    Records alternate recall (even ids) and reasoning (odd ids); records ``2p`` and
    ``2p + 1`` form pair ``p``. An odd ``n_prompts`` leaves the last pair with its recall
    record only. A pair whose prompts fail the tokenization check (a slot word is not its
    own single token in context, or the four prompts differ in length or role
    positions) is resampled up to :data:`MAX_ATTEMPTS_PER_PAIR` times and otherwise
    dropped; ids and pair ids stay contiguous.

    Each record is a JSON-serialisable dict::

        {"task": "recall_reasoning", "id": int, "pair_id": int,
         "family": "recall" | "reasoning", "prompt": str,
         "answer": " City", "wrong_answer": " City", "candidates": [3 sorted cities],
         "correct": [answer], "entity": str, "referent": 0 | 1,
         "names": {"A": str, "C": str, "B": str}, "context_cities": [str, str],
         "roles": {"SUBJECT", "ENTITY", "CONTEXT_CITY", "CONTEXT_PERSON",
                   "OTHER_CITY", "KIND", "END"},
         "counterfactuals": {"swap": {"prompt": str, "answer": str,
                                      "wrong_answer": str, "roles": {...}, ...}}}

    Role positions index ``tokenizer(prompt)["input_ids"]`` (default special tokens
    included) and are identical across both records of a pair and their
    counterfactuals.

    Args:
        tokenizer: A fast Hugging Face tokenizer of the model under study.
        n_prompts: Number of records to generate (half of each family).
        seed: Seed for :class:`random.Random`; the same seed and tokenizer give the same
            records.
        min_prompts: Fewest records acceptable; defaults to ``n_prompts``.

    Returns:
        Between ``min_prompts`` and ``n_prompts`` records, ids ``0..len-1``.

    Raises:
        ValueError: If ``n_prompts`` < 1 or ``min_prompts`` is not in ``[0, n_prompts]``.
        TaskTooSmallError: If fewer than ``min_prompts`` records can be made, e.g. because
            too few names, countries or capitals are single tokens.
    """
    required = required_count(n_prompts, min_prompts)

    names = single_token_words(tokenizer, NAMES)
    facts = load_relations()["capital_of"]["facts"]
    cities = single_token_words(tokenizer, [capital for _country, capital in facts])
    capitals = {
        country: capital
        for country, capital in facts
        if capital in cities and single_token_words(tokenizer, [country])
    }
    kinds_ok = len(single_token_words(tokenizer, KIND_WORDS.values())) == len(KIND_WORDS)
    # A pair needs 3 names, 2 countries with capitals, and 3 more cities.
    if len(names) < 3 or len(capitals) < 2 or len(cities) < 5 or not kinds_ok:
        # None can be made: [] if none are required, else a TaskTooSmallError.
        return check_enough(
            TASK_NAME,
            tokenizer,
            [],
            n_prompts,
            required,
            (
                f"single tokens: {len(names)} names (need 3), {len(capitals)} countries "
                f"with capitals (need 2), {len(cities)} cities (need 5), query words "
                f"{'ok' if kinds_ok else 'split'}"
            ),
        )
    words = {*names, *cities, *capitals, *KIND_WORDS.values()}
    token_ids = {word: single_token_id(tokenizer, " " + word) for word in words}

    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    n_pairs = (n_prompts + 1) // 2
    for _slot in range(n_pairs):
        for _attempt in range(MAX_ATTEMPTS_PER_PAIR):
            pair = _pair(tokenizer, rng, len(records) // 2, names, capitals, cities, token_ids)
            if pair is not None:
                break
        else:
            continue
        for record in pair[: n_prompts - len(records)]:
            records.append({"task": TASK_NAME, "id": len(records), **record})

    return check_enough(
        TASK_NAME,
        tokenizer,
        records,
        n_prompts,
        required,
        "pairs whose slot words merged with their neighbours were dropped",
    )
