"""Indirect Object Identification (IOI) prompts, after Wang et al. (2022).

Wang, Variengien, Conmy, Shlegeris and Steinhardt, "Interpretability in the Wild: a
Circuit for Indirect Object Identification in GPT-2 small", arXiv:2211.00593.

An IOI prompt introduces two people and then has one of them (the subject, S) do
something *to* someone; the model should complete it with the other person, the
indirect object (IO)::

    When Mary and John went to the store, John gave a drink to    ->  " Mary"

The prompt mentions S twice (S1 in the opening clause, S2 as the one giving) and IO
once. In the *ABBA* order IO comes first in the opening clause ("Mary and John ...,
John"); in the *BABA* order S comes first ("John and Mary ..., John").

Each record also carries the two counterfactual prompts used for activation patching:

* ``flipped``: S2 is replaced by the IO name ("..., Mary gave a drink to"), so the
  correct completion becomes S. This is the standard corrupted run for patching
  (the right and wrong answers swap).
* ``abc``: IO, S1 and S2 are replaced by three fresh, distinct names, which removes the
  repeated-name information the circuit uses (the paper's "ABC" distribution, used for
  mean ablation and path patching).

All role words are single tokens for the given tokenizer, so every counterfactual has
exactly as many tokens as its clean prompt and role positions agree across them.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
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

TASK_NAME = "ioi"

#: Orders of the two names in the opening clause: IO first (ABBA) or S first (BABA).
ORDERS = ("ABBA", "BABA")

# Template slots. FIRST and SECOND are the two names of the opening clause, in text
# order; REPEAT is the second mention of the subject (S2). Which of FIRST/SECOND is IO
# depends on the order, so one template string serves both ABBA and BABA.
_FIRST, _SECOND, _REPEAT = "FIRST", "SECOND", "REPEAT"
_PLACE, _OBJECT = "PLACE", "OBJECT"
_NAME_SLOTS = (_FIRST, _SECOND, _REPEAT)

#: Prompt templates in the style of Wang et al. Every name slot follows a space, so a
#: name is the single token " Name", and every prompt ends right before the answer.
#: Objects follow "a", so OBJECTS all begin with a consonant sound.
TEMPLATES: tuple[str, ...] = (
    "When {FIRST} and {SECOND} went to the {PLACE}, {REPEAT} gave a {OBJECT} to",
    "Then, {FIRST} and {SECOND} had a lot of fun at the {PLACE}. {REPEAT} gave a {OBJECT} to",
    "After {FIRST} and {SECOND} arrived at the {PLACE}, {REPEAT} handed a {OBJECT} to",
    "While {FIRST} and {SECOND} were waiting at the {PLACE}, {REPEAT} passed a {OBJECT} to",
    "Yesterday, {FIRST} and {SECOND} spent the afternoon at the {PLACE}. Later, {REPEAT}"
    " offered a {OBJECT} to",
    "Once {FIRST} and {SECOND} got back from the {PLACE}, {REPEAT} brought a {OBJECT} to",
    "On Sunday, {FIRST} and {SECOND} met up at the {PLACE}, and {REPEAT} showed a {OBJECT} to",
    "The friends {FIRST} and {SECOND} walked over to the {PLACE}. There, {REPEAT} threw a"
    " {OBJECT} to",
    "Because {FIRST} and {SECOND} were both at the {PLACE}, {REPEAT} lent a {OBJECT} to",
    "At the {PLACE}, {FIRST} and {SECOND} found a {OBJECT}. Then {REPEAT} gave the {OBJECT} to",
    "As {FIRST} and {SECOND} were leaving the {PLACE}, {REPEAT} sent a {OBJECT} to",
    "The {PLACE} was busy when {FIRST} and {SECOND} got there, so {REPEAT} gave a {OBJECT} to",
    "Earlier today, {FIRST} and {SECOND} tidied up the {PLACE}, and afterwards {REPEAT} sold a"
    " {OBJECT} to",
    "During a visit to the {PLACE}, {FIRST} and {SECOND} talked for hours. In the end,"
    " {REPEAT} returned a {OBJECT} to",
    "Before {FIRST} and {SECOND} left for the {PLACE}, {REPEAT} packed a {OBJECT} and gave it to",
    "Last night, {FIRST} and {SECOND} had dinner near the {PLACE}. Afterwards, {REPEAT} gave a"
    " {OBJECT} to",
    "It was raining when {FIRST} and {SECOND} reached the {PLACE}, so {REPEAT} handed a"
    " {OBJECT} to",
    "Outside the {PLACE}, {FIRST} and {SECOND} ran into each other, and {REPEAT} gave a"
    " {OBJECT} to",
)

#: Common English first names; only those that are a single token with a leading space
#: for the tokenizer at hand are used. Names that are also everyday words (Mark, Grace,
#: Will, ...) are left out so a name is never read as a verb or noun.
NAMES: tuple[str, ...] = (
    "Mary", "John", "Michael", "David", "James", "Robert", "William", "Richard", "Thomas",
    "Daniel", "Paul", "George", "Steven", "Kevin", "Brian", "Edward", "Jason", "Jeff",
    "Ryan", "Eric", "Jacob", "Gary", "Nicholas", "Jonathan", "Stephen", "Larry", "Justin",
    "Scott", "Brandon", "Frank", "Benjamin", "Gregory", "Samuel", "Patrick", "Alexander",
    "Jack", "Dennis", "Jerry", "Tyler", "Aaron", "Henry", "Adam", "Peter", "Nathan", "Kyle",
    "Walter", "Ethan", "Jeremy", "Harold", "Carl", "Arthur", "Roger", "Sean", "Austin",
    "Noah", "Jesse", "Joe", "Alan", "Louis", "Philip", "Patricia", "Jennifer", "Linda",
    "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen", "Lisa", "Nancy", "Betty",
    "Sandra", "Margaret", "Ashley", "Kimberly", "Emily", "Donna", "Michelle", "Carol",
    "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Laura", "Helen", "Sharon",
    "Cynthia", "Kathleen", "Amy", "Angela", "Anna", "Ruth", "Brenda", "Nicole", "Katherine",
    "Samantha", "Christine", "Emma", "Catherine", "Rachel", "Janet", "Maria", "Heather",
    "Diane", "Julie", "Victoria", "Kelly", "Lauren", "Olivia", "Megan", "Martha", "Andrea",
    "Hannah", "Alice", "Sophia", "Julia", "Lucy", "Sam", "Tom", "Kate",
)  # fmt: skip

#: Places, used after "the". They may be several tokens: positions are always computed
#: on the actual tokenization, and a name swap never changes the place.
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
    "park", "beach", "library", "market", "museum", "cafe", "church", "zoo", "gym",
    "airport", "bakery", "cinema", "theater",
)  # fmt: skip

#: Objects, used after "a" (hence consonant sounds only). May be several tokens.
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book",
    "bag", "pen", "gift", "letter", "cake", "flower", "card", "ball", "hat", "toy", "watch",
    "sandwich", "coin", "key", "lamp", "scarf",
)  # fmt: skip

#: Distinct names one record needs: IO and S for the clean prompt plus three fresh ones
#: for the ABC counterfactual.
NAMES_PER_RECORD = 5

#: How many times one record slot is resampled with fresh names when the tokenization
#: check fails (e.g. a name merges with its neighbour in context) before giving up.
MAX_ATTEMPTS_PER_RECORD = 20


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split a template into (literal text, slot name or None) pieces."""
    pieces = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        pieces.append((literal, field))
    return pieces


def _check_templates() -> None:
    """Fail at import time if a template lacks a slot or has an unknown one."""
    allowed = {*_NAME_SLOTS, _PLACE, _OBJECT}
    for index, template in enumerate(TEMPLATES):
        fields = [field for _literal, field in _parse_template(template) if field is not None]
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"IOI template {index} has unknown slots {sorted(unknown)}")
        for slot in _NAME_SLOTS:
            if fields.count(slot) != 1:
                raise ValueError(f"IOI template {index} must use {{{slot}}} exactly once")
        if template.endswith(" "):
            raise ValueError(f"IOI template {index} must not end with a space")


_check_templates()


def render_template(
    template: str, slot_values: dict[str, str], name_roles: dict[str, str]
) -> tuple[str, dict[str, CharSpan]]:
    """Fill a template and report the character span of each name role.

    Args:
        template: One of :data:`TEMPLATES`.
        slot_values: Slot name -> text (``FIRST``, ``SECOND``, ``REPEAT``, ``PLACE``,
            ``OBJECT``).
        name_roles: Name slot -> role name whose span to record, e.g.
            ``{"FIRST": "IO", "SECOND": "S1", "REPEAT": "S2"}``.

    Returns:
        The prompt and a dict role name -> character span of that role's name.
    """
    parts: list[str] = []
    spans: dict[str, CharSpan] = {}
    cursor = 0
    for literal, field in _parse_template(template):
        parts.append(literal)
        cursor += len(literal)
        if field is None:
            continue
        value = slot_values[field]
        if field in name_roles:
            spans[name_roles[field]] = (cursor, cursor + len(value))
        parts.append(value)
        cursor += len(value)
    return "".join(parts), spans


def _name_roles(order: str) -> dict[str, str]:
    """Map template name slots to IOI roles for the given order."""
    if order == "ABBA":
        return {_FIRST: "IO", _SECOND: "S1", _REPEAT: "S2"}
    if order == "BABA":
        return {_FIRST: "S1", _SECOND: "IO", _REPEAT: "S2"}
    raise ValueError(f"unknown IOI order {order!r}; expected one of {ORDERS}")


def _encode_checked(
    tokenizer: Any,
    template: str,
    order: str,
    names_by_role: dict[str, str],
    place: str,
    obj: str,
    name_token_ids: dict[str, int],
) -> tuple[str, list[int], dict[str, int]] | None:
    """Render one prompt and locate its roles; None when the tokenization check fails.

    The check requires the token at each name role to be exactly the name's standalone
    single-token id, which rules out names merging with neighbouring text in context.
    """
    roles_by_slot = _name_roles(order)
    slot_values = {_PLACE: place, _OBJECT: obj}
    for slot, role in roles_by_slot.items():
        slot_values[slot] = names_by_role[role]
    prompt, spans = render_template(template, slot_values, roles_by_slot)
    role_spans: dict[str, CharSpan | None] = {
        "IO": spans["IO"],
        "S1": spans["S1"],
        "S2": spans["S2"],
        END_ROLE: None,
    }
    input_ids, positions = encode_with_roles(tokenizer, prompt, role_spans)
    for role in ("IO", "S1", "S2"):
        if input_ids[positions[role]] != name_token_ids[names_by_role[role]]:
            return None
    return prompt, input_ids, positions


def _make_record(
    tokenizer: Any,
    rng: random.Random,
    record_index: int,
    template_index: int,
    order: str,
    names: tuple[str, ...],
    name_token_ids: dict[str, int],
    places: tuple[str, ...] = PLACES,
    objects: tuple[str, ...] = OBJECTS,
) -> dict[str, Any] | None:
    """Sample names for one record and build it; None if its tokenization check fails."""
    template = TEMPLATES[template_index]
    io_name, subject_name = rng.sample(names, 2)
    place = rng.choice(places)
    obj = rng.choice(objects)
    fresh_names = [name for name in names if name not in (io_name, subject_name)]
    name_a, name_b, name_c = rng.sample(fresh_names, 3)

    clean = _encode_checked(
        tokenizer,
        template,
        order,
        {"IO": io_name, "S1": subject_name, "S2": subject_name},
        place,
        obj,
        name_token_ids,
    )
    flipped = _encode_checked(
        tokenizer,
        template,
        order,
        {"IO": io_name, "S1": subject_name, "S2": io_name},
        place,
        obj,
        name_token_ids,
    )
    abc = _encode_checked(
        tokenizer,
        template,
        order,
        {"IO": name_a, "S1": name_b, "S2": name_c},
        place,
        obj,
        name_token_ids,
    )
    if clean is None or flipped is None or abc is None:
        return None
    clean_prompt, clean_ids, clean_roles = clean
    flipped_prompt, flipped_ids, flipped_roles = flipped
    abc_prompt, abc_ids, abc_roles = abc
    # Patching swaps activations position by position, so the runs must align exactly.
    if not len(clean_ids) == len(flipped_ids) == len(abc_ids):
        return None
    if not clean_roles == flipped_roles == abc_roles:
        return None

    return {
        "task": TASK_NAME,
        "id": record_index,
        "template": template_index,
        "order": order,
        "prompt": clean_prompt,
        "answer": " " + io_name,
        "wrong_answer": " " + subject_name,
        "names": {"IO": io_name, "S": subject_name, "place": place, "object": obj},
        "roles": clean_roles,
        "counterfactuals": {
            "flipped": {
                "prompt": flipped_prompt,
                "answer": " " + subject_name,
                "wrong_answer": " " + io_name,
                "roles": flipped_roles,
            },
            "abc": {
                "prompt": abc_prompt,
                "roles": abc_roles,
                "names": {"A": name_a, "B": name_b, "C": name_c},
            },
        },
    }


def generate_ioi(
    tokenizer: Any,
    n_prompts: int,
    seed: int,
    min_prompts: int | None = None,
    *,
    templates: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Generate seeded IOI prompts (Wang et al. 2022, arXiv:2211.00593) for a tokenizer.

    Names are drawn from :data:`NAMES` filtered to those that are a single token with a
    leading space for ``tokenizer``; places and objects from :data:`PLACES` and
    :data:`OBJECTS`. Record ``i`` uses template ``(i // 2) % len(TEMPLATES)`` and order
    ``ABBA`` for even ``i``, ``BABA`` for odd ``i``, so templates are used evenly and
    each template appears in both orders. ``templates``, ``names``, ``places`` and
    ``objects`` restrict the draw to subsets (template indices, words of the lists),
    e.g. to keep a training and a test set apart; record ``i`` then uses the subset's
    template ``(i // 2) % len(templates)``. A record whose clean or counterfactual
    prompts fail the tokenization check (a role token is not the name's own token, or
    the token counts differ) is resampled with fresh names up to
    :data:`MAX_ATTEMPTS_PER_RECORD` times and otherwise dropped; ids stay contiguous.

    Each record is a JSON-serialisable dict::

        {"task": "ioi", "id": int, "template": int, "order": "ABBA" | "BABA",
         "prompt": str, "answer": " IO", "wrong_answer": " S",
         "names": {"IO": str, "S": str, "place": str, "object": str},
         "roles": {"IO": int, "S1": int, "S2": int, "END": int},
         "counterfactuals": {
             "flipped": {"prompt": str, "answer": " S", "wrong_answer": " IO",
                         "roles": {...}},
             "abc": {"prompt": str, "roles": {...},
                     "names": {"A": str, "B": str, "C": str}}}}

    Role positions index ``tokenizer(prompt)["input_ids"]`` with the tokenizer's default
    special tokens; ``END`` is the last token of the prompt, whose next-token logits
    score the answer. In ``flipped`` the S2 position holds the IO name; in ``abc`` name
    A sits at IO, B at S1 and C at S2, all distinct from the clean IO and S. Role
    positions are identical across the clean prompt and both counterfactuals.

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
            because fewer than :data:`NAMES_PER_RECORD` names are single tokens.
    """
    required = required_count(n_prompts, min_prompts)
    template_indices = tuple(range(len(TEMPLATES)) if templates is None else templates)
    for label, chosen, known in (
        ("templates", template_indices, range(len(TEMPLATES))),
        ("names", names or (), NAMES),
        ("places", places or (), PLACES),
        ("objects", objects or (), OBJECTS),
    ):
        unknown = [item for item in chosen if item not in known]
        if unknown:
            raise ValueError(f"IOI {label} {unknown} are not in the generator's lists")
    if not template_indices:
        raise ValueError("IOI templates: the subset is empty")

    names = single_token_words(tokenizer, NAMES if names is None else tuple(names))
    if len(names) < NAMES_PER_RECORD:
        # None can be made: [] if none are required, else a TaskTooSmallError.
        return check_enough(
            TASK_NAME,
            tokenizer,
            [],
            n_prompts,
            required,
            (
                f"only {len(names)} of {len(NAMES)} names are single tokens, "
                f"each prompt needs {NAMES_PER_RECORD}"
            ),
        )
    name_token_ids = {name: single_token_id(tokenizer, " " + name) for name in names}

    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    place_words = PLACES if places is None else tuple(places)
    object_words = OBJECTS if objects is None else tuple(objects)
    for slot in range(n_prompts):
        template_index = template_indices[(slot // len(ORDERS)) % len(template_indices)]
        order = ORDERS[slot % len(ORDERS)]
        for _attempt in range(MAX_ATTEMPTS_PER_RECORD):
            record = _make_record(
                tokenizer,
                rng,
                len(records),
                template_index,
                order,
                names,
                name_token_ids,
                place_words,
                object_words,
            )
            if record is not None:
                records.append(record)
                break

    return check_enough(
        TASK_NAME,
        tokenizer,
        records,
        n_prompts,
        required,
        f"{len(names)} of {len(NAMES)} names are single tokens",
    )


def swap_order(
    tokenizer: Any, record: dict[str, Any]
) -> tuple[str, list[int], dict[str, int]] | None:
    """The record's prompt with the opening clause's two names in the other order.

    ABBA becomes BABA and back: the same names, template, place and object, so the
    answer (IO) is unchanged and only where S1 sits differs, the IOI *position*
    feature (Makelov, Lange & Nanda 2023, §4: patching between ABB and BAB prompts).

    Returns:
        ``(prompt, token ids, roles)`` of the swapped prompt, or None when it does not
        tokenize position by position like the record (a name merging with its
        neighbour).
    """
    names = record["names"]
    io_name, subject = names["IO"], names["S"]
    order = ORDERS[1 - ORDERS.index(record["order"])]
    name_ids = {name: single_token_id(tokenizer, " " + name) for name in (io_name, subject)}
    swapped = _encode_checked(
        tokenizer,
        TEMPLATES[record["template"]],
        order,
        {"IO": io_name, "S1": subject, "S2": subject},
        names["place"],
        names["object"],
        name_ids,
    )
    if swapped is None:
        return None
    prompt, ids, roles = swapped
    clean = tokenizer(record["prompt"])["input_ids"]
    if len(ids) != len(clean) or roles["END"] != record["roles"]["END"]:
        return None
    return prompt, ids, roles
