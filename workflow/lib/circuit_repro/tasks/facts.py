"""Factual-recall prompts (subject -> attribute), for causal tracing and patching.

The prompts follow the setting of Meng, Bau, Andonian and Belinkov, "Locating and
Editing Factual Associations in GPT" (NeurIPS 2022, arXiv:2202.05262), where a fact is
read out of the model at the *last token of the subject*, and serve as the factual
recall variant of Makelov, Lange and Nanda, "Is This the Subspace You Are Looking for?
An Interpretability Illusion for Subspace Activation Patching" (arXiv:2311.17030).

Each prompt states a relation about one subject and ends right before the attribute::

    The capital of France is                         ->  " Paris"
    The official language of Brazil is               ->  " Portuguese"
    The currency of Japan is the                     ->  " yen"
    The Eiffel Tower is located in the city of       ->  " Paris"

The facts and templates live in the package data file ``circuit_repro/tasks/data/facts.json``
(relations ``capital_of``, ``language_of``, ``currency_of`` and ``landmark_city``, two
templates each). For a tokenizer, a fact is usable when its attribute is a single token
after a space; a subject may be several tokens. Roles mark the first and last token of
the subject (``SUBJECT_FIRST``, ``SUBJECT_LAST``) and the last prompt token (``END``).

Every record has one counterfactual, ``other_subject``: the same template with another
subject of the same relation whose attribute differs and whose tokens exactly fill the
clean subject's positions, so the two prompts differ only inside the subject. The clean
``wrong_answer`` is that other subject's attribute, so clean and counterfactual answers
swap, as patching metrics expect. ``candidates`` holds the answer, the wrong answer and
two further attributes of the relation (four in all, sorted).

:func:`filter_known` keeps the records a model answers correctly, for analyses that
need facts the model knows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from circuit_repro.tasks.base import (
    END_ROLE,
    CharSpan,
    check_enough,
    encode_with_roles,
    is_single_token,
    required_count,
)

TASK_NAME = "facts"

#: Package data file (inside ``circuit_repro``) holding the relations.
DATA_FILE = "data/facts.json"

#: Template slot of the subject.
SUBJECT_SLOT = "{subject}"

#: Number of answer options per record: the answer plus three other attributes.
N_CANDIDATES = 4

#: Role names of the first and last subject token.
SUBJECT_FIRST, SUBJECT_LAST = "SUBJECT_FIRST", "SUBJECT_LAST"


@lru_cache(maxsize=1)
def _load_data() -> dict[str, Any]:
    """Read and validate ``circuit_repro/tasks/data/facts.json`` (cached)."""
    text = resources.files("circuit_repro.tasks").joinpath(DATA_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    for name, relation in data["relations"].items():
        for template in relation["templates"]:
            if template.count(SUBJECT_SLOT) != 1 or template.endswith(" "):
                raise ValueError(
                    f"{DATA_FILE}: template {template!r} of relation {name!r} must contain "
                    f"{SUBJECT_SLOT} once and not end with a space"
                )
        subjects = [subject for subject, _attribute in relation["facts"]]
        if len(set(subjects)) != len(subjects):
            raise ValueError(f"{DATA_FILE}: relation {name!r} lists a subject twice")
    return data


def load_relations() -> dict[str, dict[str, Any]]:
    """Return the relations of the facts file.

    Returns:
        Relation name -> ``{"description": str, "templates": [str, ...],
        "facts": [[subject, attribute], ...]}``, in file order.
    """
    return _load_data()["relations"]


RELATIONS: tuple[str, ...] = tuple(load_relations())
"""Names of all relations, in file order."""


def _subject_tokens(
    tokenizer: Any, prompt: str, span: CharSpan
) -> tuple[list[int], dict[str, int]] | None:
    """Encode a prompt and locate its subject; None if the subject merges with its context.

    The subject is accepted when its first token starts at the subject (or at the space
    before it) and its last token ends exactly where the subject ends.
    """
    start, end = span
    input_ids, positions = encode_with_roles(
        tokenizer,
        prompt,
        {SUBJECT_FIRST: (start, end), SUBJECT_LAST: (end - 1, end), END_ROLE: None},
    )
    offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    first_start = int(offsets[positions[SUBJECT_FIRST]][0])
    last_end = int(offsets[positions[SUBJECT_LAST]][1])
    starts_cleanly = first_start == start or (
        first_start < start and prompt[first_start:start].isspace()
    )
    if not starts_cleanly or last_end != end:
        return None
    return input_ids, positions


def _render(template: str, subject: str) -> tuple[str, CharSpan]:
    """Fill the subject slot; return the prompt and the subject's character span."""
    start = template.index(SUBJECT_SLOT)
    prompt = template.replace(SUBJECT_SLOT, subject)
    return prompt, (start, start + len(subject))


def _usable_facts(tokenizer: Any, relation: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Facts of a relation whose attribute is a single token after a space."""
    return [
        (subject, attribute)
        for subject, attribute in relation["facts"]
        if is_single_token(tokenizer, " " + attribute)
    ]


def _relation_pool(
    tokenizer: Any, relation_name: str
) -> tuple[list[dict[str, Any]], dict[tuple[int, int], list[dict[str, Any]]]]:
    """Encode every usable (template, subject) prompt of one relation.

    Returns:
        The encoded prompts, and the same grouped by ``(template, token count)`` so that
        a counterfactual partner of the same length is found quickly.
    """
    relation = load_relations()[relation_name]
    facts = _usable_facts(tokenizer, relation)
    if len({attribute for _subject, attribute in facts}) < N_CANDIDATES:
        return [], {}
    items: list[dict[str, Any]] = []
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for template_index, template in enumerate(relation["templates"]):
        for subject, attribute in facts:
            prompt, span = _render(template, subject)
            encoded = _subject_tokens(tokenizer, prompt, span)
            if encoded is None:
                continue
            input_ids, positions = encoded
            item = {
                "relation": relation_name,
                "template": template_index,
                "subject": subject,
                "attribute": attribute,
                "prompt": prompt,
                "input_ids": input_ids,
                "roles": positions,
            }
            items.append(item)
            groups.setdefault((template_index, len(input_ids)), []).append(item)
    return items, groups


def _differs_only_in_subject(clean: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two same-template encodings align except inside the subject tokens."""
    if clean["roles"] != other["roles"] or len(clean["input_ids"]) != len(other["input_ids"]):
        return False
    first, last = clean["roles"][SUBJECT_FIRST], clean["roles"][SUBJECT_LAST]
    return all(
        a == b
        for position, (a, b) in enumerate(zip(clean["input_ids"], other["input_ids"], strict=True))
        if not first <= position <= last
    )


def _make_record(
    rng: random.Random,
    record_id: int,
    item: Mapping[str, Any],
    groups: Mapping[tuple[int, int], list[dict[str, Any]]],
    attributes: Sequence[str],
) -> dict[str, Any] | None:
    """Build one record around ``item``; None when no counterfactual subject fits."""
    partners = [
        other
        for other in groups[(item["template"], len(item["input_ids"]))]
        if other["attribute"] != item["attribute"] and _differs_only_in_subject(item, other)
    ]
    if not partners:
        return None
    other = rng.choice(partners)
    extra_pool = [a for a in attributes if a not in (item["attribute"], other["attribute"])]
    extras = rng.sample(extra_pool, N_CANDIDATES - 2)
    answer = " " + item["attribute"]
    wrong_answer = " " + other["attribute"]
    return {
        "task": TASK_NAME,
        "id": record_id,
        "relation": item["relation"],
        "template": item["template"],
        "subject": item["subject"],
        "attribute": item["attribute"],
        "prompt": item["prompt"],
        "answer": answer,
        "wrong_answer": wrong_answer,
        "candidates": sorted([answer, wrong_answer, *(" " + a for a in extras)]),
        "correct": [answer],
        "roles": dict(item["roles"]),
        "counterfactuals": {
            "other_subject": {
                "prompt": other["prompt"],
                "subject": other["subject"],
                "answer": wrong_answer,
                "wrong_answer": answer,
                "roles": dict(other["roles"]),
            }
        },
    }


def generate_facts(
    tokenizer: Any,
    n_prompts: int,
    seed: int,
    relations: Sequence[str] | None = None,
    min_prompts: int | None = None,
) -> list[dict[str, Any]]:
    """Generate seeded factual-recall prompts (Meng et al. 2022) for a tokenizer.

    Every usable ``(relation, template, subject)`` combination is a distinct prompt; each
    is used at most once. A relation is usable when at least :data:`N_CANDIDATES` of its
    attributes are single tokens; unusable relations are skipped. The combinations of
    each relation are shuffled with ``random.Random(seed)`` and records take the
    relations in turn (record ``i`` from relation ``i % R`` while each has items left),
    so relations are balanced up to the size of the smallest. A combination with no
    counterfactual partner (no subject of another attribute with the same token layout)
    is skipped.

    Each record is a JSON-serialisable dict::

        {"task": "facts", "id": int, "relation": str, "template": int,
         "subject": str, "attribute": str, "prompt": str,
         "answer": " attribute", "wrong_answer": " other attribute",
         "candidates": [4 sorted " attribute" strings], "correct": [answer],
         "roles": {"SUBJECT_FIRST": int, "SUBJECT_LAST": int, "END": int},
         "counterfactuals": {"other_subject": {"prompt": str, "subject": str,
             "answer": wrong_answer, "wrong_answer": answer, "roles": {...}}}}

    Role positions index ``tokenizer(prompt)["input_ids"]`` (default special tokens
    included) and are identical in the counterfactual, which has the same length and
    differs from the clean prompt only between ``SUBJECT_FIRST`` and ``SUBJECT_LAST``.

    Args:
        tokenizer: A fast Hugging Face tokenizer of the model under study.
        n_prompts: Number of records to generate.
        seed: Seed for :class:`random.Random`; the same seed and tokenizer give the same
            records.
        relations: Relation names to use (see :data:`RELATIONS`); all when None.
        min_prompts: Fewest records acceptable; defaults to ``n_prompts``.

    Returns:
        Between ``min_prompts`` and ``n_prompts`` records, ids ``0..len-1``.

    Raises:
        ValueError: If ``n_prompts`` < 1, ``min_prompts`` is not in ``[0, n_prompts]`` or
            a relation name is unknown.
        TaskTooSmallError: If fewer than ``min_prompts`` records can be made.
    """
    required = required_count(n_prompts, min_prompts)
    names = list(RELATIONS if relations is None else relations)
    unknown = [name for name in names if name not in RELATIONS]
    if unknown or not names:
        raise ValueError(f"unknown relations {unknown}; known relations: {', '.join(RELATIONS)}")

    rng = random.Random(seed)
    queues: list[list[dict[str, Any]]] = []
    groups_by_relation: dict[str, dict[tuple[int, int], list[dict[str, Any]]]] = {}
    attributes_by_relation: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        items, groups = _relation_pool(tokenizer, name)
        if not items:
            continue
        rng.shuffle(items)
        queues.append(items)
        groups_by_relation[name] = groups
        attributes_by_relation[name] = sorted({item["attribute"] for item in items})

    records: list[dict[str, Any]] = []
    turn = 0
    while len(records) < n_prompts and any(queues):
        queue = queues[turn % len(queues)]
        turn += 1
        while queue:
            item = queue.pop()
            relation = item["relation"]
            record = _make_record(
                rng,
                len(records),
                item,
                groups_by_relation[relation],
                attributes_by_relation[relation],
            )
            if record is not None:
                records.append(record)
                break

    usable = ", ".join(groups_by_relation) or "none"
    return check_enough(
        TASK_NAME,
        tokenizer,
        records,
        n_prompts,
        required,
        f"relations with at least {N_CANDIDATES} single-token attributes: {usable}",
    )


def filter_known(
    records: Sequence[Mapping[str, Any]], scores: Sequence[Any] | Mapping[int, Any]
) -> list[Mapping[str, Any]]:
    """Keep the records the model gets right.

    Args:
        records: Records from :func:`generate_facts` (any records with an ``"id"``).
        scores: Per-record truth values, either aligned with ``records`` (a list, tuple
            or 1-D array of booleans) or a mapping from record id to boolean.

    Returns:
        The records whose score is true, in their original order and unchanged (ids are
        kept, so results can still be joined to other outputs by id).

    Raises:
        ValueError: If a sequence of scores has a different length from ``records``, or
            a mapping lacks the id of some record.
    """
    if isinstance(scores, Mapping):
        missing = [record["id"] for record in records if record["id"] not in scores]
        if missing:
            raise ValueError(f"scores lack record ids {missing[:5]} ({len(missing)} in all)")
        return [record for record in records if bool(scores[record["id"]])]
    flags = list(scores)
    if len(flags) != len(records):
        raise ValueError(f"got {len(flags)} scores for {len(records)} records")
    return [record for record, flag in zip(records, flags, strict=True) if bool(flag)]


def prompts_about(
    tokenizer: Any, relation: str, subject: str, exclude_template: int | None = None
) -> list[dict[str, Any]]:
    """Every template of ``relation`` filled with ``subject``, as encoded prompts.

    For tests of an edit on held-out prompts about the same subject (Makelov, Lange &
    Nanda 2023, §5: a fact edited through one prompt should hold in others).

    Returns:
        ``{"template": int, "prompt": str, "input_ids": [int], "roles": {...}}`` per
        template other than ``exclude_template`` whose subject tokenizes cleanly.

    Raises:
        ValueError: An unknown relation.
    """
    relations = load_relations()
    if relation not in relations:
        raise ValueError(f"unknown relation {relation!r}; known relations: {', '.join(RELATIONS)}")
    prompts = []
    for index, template in enumerate(relations[relation]["templates"]):
        if index == exclude_template:
            continue
        prompt, span = _render(template, subject)
        encoded = _subject_tokens(tokenizer, prompt, span)
        if encoded is not None:
            ids, roles = encoded
            prompts.append({"template": index, "prompt": prompt, "input_ids": ids, "roles": roles})
    return prompts
