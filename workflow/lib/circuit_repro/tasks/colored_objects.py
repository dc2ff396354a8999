"""Colored-objects prompts, after Merullo, Eickhoff and Pavlick (2023).

Merullo, Eickhoff and Pavlick, "Circuit Component Reuse Across Tasks in Transformer
Language Models", arXiv:2310.08744. Their colored-objects task (adapted from BIG-bench's
"reasoning about colored objects") lists three coloured objects and asks for the colour
of one of them; the circuit that solves it reuses the IOI circuit's mover heads.

Each prompt is one solved example followed by the query (1-shot), both in the format::

    Q: On the desk, you see a red pen, a blue cup, and a green book. What color is the cup?
    A: Blue

    Q: On the floor, I see a purple hat, an orange bowl, and a black key. What color is the hat?
    A:                                                                       ->  " Purple"

The surface (table, desk, floor) and the opening phrase (there is, you see, I see) are
drawn at random for each question; every question lists three distinct colours and
three distinct objects. The article before a colour is "an" for a colour starting with a
vowel ("an orange bowl") and "a" otherwise. The answer is the queried object's colour in
Title case with a leading space; the candidates are the three listed colours, and the
``wrong_answer`` is the colour of one other listed object (the distractor).

Each record carries one counterfactual for activation patching:

* ``different_object``: the same prompt, but the question asks about the distractor
  object, so answer and wrong answer swap. Only the queried object's token changes.

Every colour (lower case and Title case) and every object is a single token with a
leading space for the tokenizer, so the counterfactual has exactly as many tokens as
the clean prompt and role positions agree across the two.
"""

from __future__ import annotations

import random
from typing import Any

from circuit_repro.tasks.base import (
    END_ROLE,
    CharSpan,
    check_enough,
    encode_with_roles,
    is_single_token,
    required_count,
    single_token_id,
    single_token_words,
)

TASK_NAME = "colored_objects"

#: Simple colours, lower case as written in the object list. A colour is usable when both
#: ``" red"`` and ``" Red"`` (the answer form) are single tokens.
COLOURS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "brown", "black",
)  # fmt: skip

#: Everyday objects that can plausibly lie on a table, desk or floor; only those that are
#: a single token with a leading space are used.
OBJECTS: tuple[str, ...] = (
    "pen", "cup", "book", "hat", "ball", "box", "shirt", "chair", "bag", "key", "phone",
    "lamp", "bowl", "shoe", "plate", "pencil", "spoon",
)  # fmt: skip

#: Where the objects are ("On the {surface}, ...").
SURFACES: tuple[str, ...] = ("table", "desk", "floor")

#: How the list is introduced ("On the table, {phrase} a red pen, ...").
PHRASES: tuple[str, ...] = ("there is", "you see", "I see")

#: Objects (and colours) listed in one question.
ITEMS_PER_QUESTION = 3

#: Distinct single-token objects a record needs: three for the query and three other
#: ones for the solved example, so the example never mentions a queried object.
OBJECTS_NEEDED = 2 * ITEMS_PER_QUESTION

#: Distinct usable colours a record needs: the three listed in the query, plus one more so
#: the example's answer can differ from the query's answer.
COLOURS_NEEDED = ITEMS_PER_QUESTION + 1

#: Text between the solved example and the query.
SEPARATOR = "\n\n"

#: How many times one record slot is resampled when its tokenization check fails.
MAX_ATTEMPTS_PER_RECORD = 20


def _article(colour: str) -> str:
    """Return the indefinite article for a colour word ("an orange", "a red")."""
    return "an" if colour[0].lower() in "aeiou" else "a"


def render_question(
    surface: str,
    phrase: str,
    colours: list[str],
    objects: list[str],
    query_index: int,
    answer: bool,
) -> tuple[str, dict[str, CharSpan]]:
    """Write one question and record where its colours and objects are.

    Args:
        surface: One of :data:`SURFACES`.
        phrase: One of :data:`PHRASES`.
        colours: The three listed colours, lower case, in list order.
        objects: The three listed objects, in list order (``colours[i]`` is the colour of
            ``objects[i]``).
        query_index: Index of the object the question asks about.
        answer: Whether to append the answer (``" Red"``) after ``"A:"``, as in the solved
            example; the query stops at ``"A:"``.

    Returns:
        The text and character spans ``COLOR_i`` and ``OBJECT_i`` (each listed word,
        without its leading space) and ``QUERY_OBJECT`` (the object named in the
        question).
    """
    spans: dict[str, CharSpan] = {}
    text = f"Q: On the {surface}, {phrase}"
    for index, (colour, obj) in enumerate(zip(colours, objects, strict=True)):
        if index == len(objects) - 1:
            text += ", and"
        elif index > 0:
            text += ","
        text += f" {_article(colour)} "
        spans[f"COLOR_{index}"] = (len(text), len(text) + len(colour))
        text += colour + " "
        spans[f"OBJECT_{index}"] = (len(text), len(text) + len(obj))
        text += obj
    text += ". What color is the "
    queried = objects[query_index]
    spans["QUERY_OBJECT"] = (len(text), len(text) + len(queried))
    text += queried + "?\nA:"
    if answer:
        text += " " + colours[query_index].title()
    return text, spans


def _encode_checked(
    tokenizer: Any, prompt: str, spans: dict[str, CharSpan], word_ids: dict[str, int]
) -> tuple[list[int], dict[str, int]] | None:
    """Locate the roles of a query prompt; None if a role token is not its word's token.

    Args:
        tokenizer: The tokenizer.
        prompt: The full prompt (example and query).
        spans: Role name -> character span in ``prompt`` (``END`` excluded).
        word_ids: Word -> id of its single token with a leading space.

    Returns:
        Token ids and role positions, or None when a word merged with its neighbours.
    """
    role_spans: dict[str, CharSpan | None] = {**spans, END_ROLE: None}
    input_ids, positions = encode_with_roles(tokenizer, prompt, role_spans)
    for role, (start, end) in spans.items():
        if input_ids[positions[role]] != word_ids[prompt[start:end]]:
            return None
    return input_ids, positions


def _continues_with(tokenizer: Any, prompt: str, answer: str, answer_id: int) -> bool:
    """Whether ``prompt + answer`` tokenizes as the prompt's tokens plus ``answer_id``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    return list(full_ids) == [*prompt_ids, answer_id]


def _make_record(
    tokenizer: Any,
    rng: random.Random,
    record_index: int,
    query_index: int,
    colours: tuple[str, ...],
    objects: tuple[str, ...],
    word_ids: dict[str, int],
) -> dict[str, Any] | None:
    """Sample one record; None when its tokenization check fails."""
    query_colours = rng.sample(colours, ITEMS_PER_QUESTION)
    query_objects = rng.sample(objects, ITEMS_PER_QUESTION)
    distractor_index = rng.choice([i for i in range(ITEMS_PER_QUESTION) if i != query_index])
    surface, phrase = rng.choice(SURFACES), rng.choice(PHRASES)

    # The solved example uses other objects, and its answer is not the query's answer,
    # so copying the example's answer is never right.
    example_objects = rng.sample([o for o in objects if o not in query_objects], 3)
    example_query = rng.randrange(ITEMS_PER_QUESTION)
    answer_colour = query_colours[query_index]
    example_answer_colour = rng.choice([c for c in colours if c != answer_colour])
    others = rng.sample([c for c in colours if c != example_answer_colour], 2)
    example_colours = others[:example_query] + [example_answer_colour] + others[example_query:]
    example_surface, example_phrase = rng.choice(SURFACES), rng.choice(PHRASES)
    example, _ = render_question(
        example_surface, example_phrase, example_colours, example_objects, example_query, True
    )
    prefix = example + SEPARATOR

    encoded = []
    for asked in (query_index, distractor_index):
        question, spans = render_question(
            surface, phrase, query_colours, query_objects, asked, answer=False
        )
        prompt = prefix + question
        shifted = {role: (s + len(prefix), e + len(prefix)) for role, (s, e) in spans.items()}
        checked = _encode_checked(tokenizer, prompt, shifted, word_ids)
        if checked is None:
            return None
        input_ids, roles = checked
        roles["ANSWER_COLOR"] = roles[f"COLOR_{asked}"]
        answer = " " + query_colours[asked].title()
        if not _continues_with(tokenizer, prompt, answer, word_ids[answer]):
            return None
        encoded.append((prompt, input_ids, roles, answer))

    (prompt, clean_ids, roles, answer), (cf_prompt, cf_ids, cf_roles, cf_answer) = encoded
    if len(clean_ids) != len(cf_ids):
        return None
    candidates = [" " + colour.title() for colour in query_colours]
    return {
        "task": TASK_NAME,
        "id": record_index,
        "prompt": prompt,
        "answer": answer,
        "wrong_answer": cf_answer,
        "candidates": candidates,
        "correct": [answer],
        "colors": list(query_colours),
        "objects": list(query_objects),
        "query_index": query_index,
        "distractor_index": distractor_index,
        "surface": surface,
        "phrase": phrase,
        "example": {
            "text": example,
            "colors": example_colours,
            "objects": example_objects,
            "query_index": example_query,
        },
        "roles": roles,
        "counterfactuals": {
            "different_object": {
                "prompt": cf_prompt,
                "answer": cf_answer,
                "wrong_answer": answer,
                "candidates": list(candidates),
                "correct": [cf_answer],
                "query_index": distractor_index,
                "roles": cf_roles,
            }
        },
    }


def generate_colored_objects(
    tokenizer: Any, n_prompts: int, seed: int, min_prompts: int | None = None
) -> list[dict[str, Any]]:
    """Generate seeded 1-shot colored-objects prompts (Merullo et al. 2023) for a tokenizer.

    Colours come from :data:`COLOURS` (kept when both ``" red"`` and ``" Red"`` are single
    tokens) and objects from :data:`OBJECTS` (kept when ``" pen"`` is a single token).
    Record ``i`` asks about the object at list position ``i % 3``, so the queried
    position cycles through the list; the distractor is one of the two other objects at
    random. A record whose prompts fail the tokenization check (a role token is not its
    word's own token, the answer would merge with ``"A:"``, or the counterfactual's length
    differs) is resampled up to :data:`MAX_ATTEMPTS_PER_RECORD` times and otherwise
    dropped; ids stay contiguous.

    Each record is a JSON-serialisable dict::

        {"task": "colored_objects", "id": int, "prompt": str,
         "answer": " Blue", "wrong_answer": " Red",
         "candidates": [" Red", " Blue", " Green"], "correct": [" Blue"],
         "colors": ["red", "blue", "green"], "objects": ["pen", "cup", "book"],
         "query_index": 1, "distractor_index": 0, "surface": str, "phrase": str,
         "example": {"text": str, "colors": [...], "objects": [...], "query_index": int},
         "roles": {"COLOR_0": int, ..., "COLOR_2": int, "OBJECT_0": int, ...,
                   "OBJECT_2": int, "QUERY_OBJECT": int, "ANSWER_COLOR": int, "END": int},
         "counterfactuals": {
             "different_object": {"prompt": str, "answer": " Red", "wrong_answer": " Blue",
                                  "candidates": [...], "correct": [" Red"],
                                  "query_index": 0, "roles": {...}}}}

    Roles index ``tokenizer(prompt)["input_ids"]`` (default special tokens included) and
    refer to the query, not the solved example: ``COLOR_i``/``OBJECT_i`` are the i-th
    listed colour and object, ``QUERY_OBJECT`` is the object named in the question,
    ``ANSWER_COLOR`` is the listed colour that answers it (equal to one ``COLOR_i``) and
    ``END`` is the last token (``":"`` of ``"A:"``). The counterfactual's roles are the
    same positions except ``ANSWER_COLOR``, which moves to the distractor's colour.

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
        TaskTooSmallError: If fewer than ``min_prompts`` records can be made, e.g. because
            fewer than :data:`COLOURS_NEEDED` colours or :data:`OBJECTS_NEEDED` objects
            are single tokens.
    """
    required = required_count(n_prompts, min_prompts)

    colours = tuple(
        colour
        for colour in single_token_words(tokenizer, COLOURS)
        if is_single_token(tokenizer, " " + colour.title())
    )
    objects = single_token_words(tokenizer, OBJECTS)
    vocabulary = (
        f"{len(colours)} of {len(COLOURS)} colours (as ' red' and ' Red') and "
        f"{len(objects)} of {len(OBJECTS)} objects are single tokens"
    )
    if len(colours) < COLOURS_NEEDED or len(objects) < OBJECTS_NEEDED:
        # None can be made: [] if none are required, else a TaskTooSmallError.
        return check_enough(
            TASK_NAME,
            tokenizer,
            [],
            n_prompts,
            required,
            (
                f"{vocabulary}; each prompt needs {COLOURS_NEEDED} colours and "
                f"{OBJECTS_NEEDED} objects"
            ),
        )
    word_ids = {word: single_token_id(tokenizer, " " + word) for word in (*colours, *objects)}
    word_ids.update({" " + c.title(): single_token_id(tokenizer, " " + c.title()) for c in colours})

    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for slot in range(n_prompts):
        query_index = slot % ITEMS_PER_QUESTION
        for _attempt in range(MAX_ATTEMPTS_PER_RECORD):
            record = _make_record(
                tokenizer, rng, len(records), query_index, colours, objects, word_ids
            )
            if record is not None:
                records.append(record)
                break

    return check_enough(TASK_NAME, tokenizer, records, n_prompts, required, vocabulary)
