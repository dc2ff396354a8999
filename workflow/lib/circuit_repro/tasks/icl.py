"""Few-shot in-context classification prompts, after Cho et al. (2024).

Cho, Kato, Yoshida and Inoue, "Revisiting In-context Learning Inference Circuit in Large
Language Models" (arXiv:2410.04468, ICLR 2025). The paper describes ICL inference in
three steps: each demonstration's text is summarised into the *forerunner token* (the
``:`` right before its label), that summary is merged with the label, and the query's
forerunner retrieves the labels of demonstrations similar to it. Analyses knock out
attention edges between the positions marked here.

A prompt has ``k_shot`` demonstrations followed by a query, e.g. for ``k_shot=2``::

    sentence: a wonderful and delightful day
    sentiment: positive
    sentence: an awful, dreary meal
    sentiment: negative
    sentence: what a lovely trip
    sentiment:                                       ->  " positive"

Two label sets are generated:

* ``sentiment``: labels ``positive`` / ``negative``; texts are short phrases whose only
  sentiment-bearing words are adjectives from :data:`POSITIVE_WORDS` or
  :data:`NEGATIVE_WORDS`, around a neutral noun from :data:`NEUTRAL_NOUNS`.
* ``topic``: labels ``sports`` / ``food`` / ``animals`` / ``weather`` (the line before
  the label reads ``topic:``); texts mention two nouns of the topic
  (:data:`TOPIC_WORDS`).

Labels must be single tokens after a space (so every label position is one token and
relabelled prompts keep their length); texts may be any number of tokens. Within a
prompt the demonstration labels are balanced (each label ``k_shot // L`` times, the
remainder drawn without repetition) and shuffled; query labels are balanced across the
records. ``wrong_answer`` is the other sentiment label, or a seeded other topic.

Roles, for demonstrations ``i = 0 .. k_shot-1``: ``DEMO_{i}_TEXT_START`` and
``DEMO_{i}_TEXT_END`` (first and last token of the text), ``DEMO_{i}_FORERUNNER`` (the
``:`` before the label), ``DEMO_{i}_LABEL``; for the query ``QUERY_TEXT_START``,
``QUERY_TEXT_END`` and ``QUERY_FORERUNNER``, which is also ``END``.

Counterfactual ``flipped_labels`` relabels every demonstration through a label
permutation without fixed points (sentiment: positive <-> negative; topic: a seeded
derangement); the query is unchanged. It has the same tokens as the clean prompt except
at the ``DEMO_{i}_LABEL`` positions; its ``answer`` is the query's label under the
permutation (what a model that follows the demonstrations' mapping would say) and its
``wrong_answer`` the clean answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from circuit_repro.tasks.base import (
    END_ROLE,
    CharSpan,
    check_enough,
    encode_with_roles,
    is_single_token,
    required_count,
)

TASK_NAME = "icl"

#: Label sets of the two classification tasks, in a fixed order.
LABELS: dict[str, tuple[str, ...]] = {
    "sentiment": ("positive", "negative"),
    "topic": ("sports", "food", "animals", "weather"),
}

#: Word printed before the label of each example (``"sentiment: positive"``).
LABEL_FIELD: dict[str, str] = {"sentiment": "sentiment", "topic": "topic"}

#: Word printed before each example's text.
TEXT_FIELD = "sentence"

#: Clearly positive adjectives.
POSITIVE_WORDS: tuple[str, ...] = (
    "wonderful", "delightful", "lovely", "fantastic", "excellent", "great", "amazing",
    "brilliant", "charming", "pleasant", "superb", "joyful", "beautiful", "perfect",
    "marvelous", "terrific", "cheerful", "splendid", "happy", "fabulous",
)  # fmt: skip

#: Clearly negative adjectives.
NEGATIVE_WORDS: tuple[str, ...] = (
    "terrible", "awful", "horrible", "dreadful", "boring", "miserable", "disgusting",
    "nasty", "dreary", "bad", "ugly", "unpleasant", "disappointing", "painful", "gloomy",
    "lousy", "rotten", "annoying", "sad", "dismal",
)  # fmt: skip

#: Sentiment-neutral nouns that the adjectives describe.
NEUTRAL_NOUNS: tuple[str, ...] = (
    "day", "meal", "movie", "trip", "party", "book", "song", "game", "show", "evening",
    "hotel", "concert", "story", "holiday", "dinner", "weekend", "visit", "class", "play",
    "morning",
)  # fmt: skip

#: Phrase patterns for sentiment texts; ``{a}`` is an article chosen to fit the next
#: word ("a" or "an"), ``{x}`` and ``{y}`` two different adjectives, ``{n}`` a noun.
SENTIMENT_PATTERNS: tuple[str, ...] = (
    "{a} {x} and {y} {n}",
    "{a} {x}, {y} {n}",
    "such {a} {x} {n}",
    "what {a} {x} {n}",
    "the {n} was {x} and {y}",
    "it was {a} {x} {n}",
)

#: Nouns that clearly belong to one topic.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "sports": (
        "match", "goal", "team", "coach", "referee", "stadium", "race", "tournament",
        "player", "league", "trophy", "football", "tennis", "marathon",
    ),
    "food": (
        "soup", "bread", "cheese", "pasta", "salad", "pizza", "cake", "rice", "sauce",
        "sandwich", "butter", "noodles", "curry", "dessert",
    ),
    "animals": (
        "dog", "cat", "horse", "lion", "tiger", "rabbit", "elephant", "monkey", "wolf",
        "sheep", "cow", "parrot", "giraffe", "fox",
    ),
    "weather": (
        "rain", "snow", "wind", "storm", "fog", "thunder", "sunshine", "frost", "clouds",
        "heat", "drizzle", "hail", "forecast", "temperature",
    ),
}  # fmt: skip

#: Phrase patterns for topic texts; ``{x}`` and ``{y}`` are two different topic nouns.
TOPIC_PATTERNS: tuple[str, ...] = (
    "the {x} and the {y}",
    "we talked about the {x} and the {y}",
    "a story about the {x} and the {y}",
    "news on the {x} and the {y}",
    "all about the {x}, then the {y}",
)

#: How many times one record slot is resampled when a tokenization check fails.
MAX_ATTEMPTS_PER_RECORD = 20


def _article(word: str) -> str:
    """Return "an" before a vowel-initial word, else "a"."""
    return "an" if word[0].lower() in "aeiou" else "a"


def _sentiment_text(rng: random.Random, label: str) -> str:
    """A short phrase whose adjectives carry ``label``'s sentiment."""
    words = POSITIVE_WORDS if label == "positive" else NEGATIVE_WORDS
    first, second = rng.sample(words, 2)
    pattern = rng.choice(SENTIMENT_PATTERNS)
    return pattern.format(a=_article(first), x=first, y=second, n=rng.choice(NEUTRAL_NOUNS))


def _topic_text(rng: random.Random, label: str) -> str:
    """A short phrase naming two nouns of topic ``label``."""
    first, second = rng.sample(TOPIC_WORDS[label], 2)
    return rng.choice(TOPIC_PATTERNS).format(x=first, y=second)


def _derangement(rng: random.Random, labels: Sequence[str]) -> dict[str, str]:
    """A seeded permutation of ``labels`` that moves every label."""
    while True:
        shuffled = list(labels)
        rng.shuffle(shuffled)
        if all(a != b for a, b in zip(labels, shuffled, strict=True)):
            return dict(zip(labels, shuffled, strict=True))


def _balanced_labels(rng: random.Random, labels: Sequence[str], count: int) -> list[str]:
    """``count`` labels, each ``count // L`` times plus distinct extras, shuffled."""
    chosen = list(labels) * (count // len(labels))
    chosen += rng.sample(list(labels), count % len(labels))
    rng.shuffle(chosen)
    return chosen


def _render(
    texts: Sequence[str], demo_labels: Sequence[str], field: str
) -> tuple[str, dict[str, CharSpan | None], dict[str, str]]:
    """Lay out the demonstrations and the query.

    ``texts`` holds the demonstration texts followed by the query text. Spans of
    ``*_TEXT_END`` cover only the text's last character, so they resolve to the token
    holding the end of the text.

    Returns:
        The prompt, role name -> character span, and label role -> its label.
    """
    parts: list[str] = []
    spans: dict[str, CharSpan | None] = {}
    label_roles: dict[str, str] = {}
    cursor = 0

    def add(piece: str) -> CharSpan:
        nonlocal cursor
        parts.append(piece)
        span = (cursor, cursor + len(piece))
        cursor += len(piece)
        return span

    for index, text in enumerate(texts):
        prefix = "QUERY" if index == len(demo_labels) else f"DEMO_{index}"
        add(f"{TEXT_FIELD}: ")
        start, end = add(text)
        spans[f"{prefix}_TEXT_START"] = (start, end)
        spans[f"{prefix}_TEXT_END"] = (end - 1, end)
        add(f"\n{field}")
        spans[f"{prefix}_FORERUNNER"] = add(":")
        if index < len(demo_labels):
            spans[f"{prefix}_LABEL"] = add(" " + demo_labels[index])
            label_roles[f"{prefix}_LABEL"] = demo_labels[index]
            add("\n")
    spans[END_ROLE] = None
    return "".join(parts), spans, label_roles


def _encode_checked(
    tokenizer: Any,
    prompt: str,
    spans: dict[str, CharSpan | None],
    label_roles: dict[str, str],
    label_ids: dict[str, int],
) -> tuple[list[int], dict[str, int]] | None:
    """Encode a prompt and check that every role is its own clean token.

    Text boundaries must not merge with the surrounding layout, each forerunner must be
    exactly ``:``, each label token must be the label's own id, and the query forerunner
    must be the last token. Returns None when a check fails.
    """
    input_ids, positions = encode_with_roles(tokenizer, prompt, spans)
    offsets = [
        (int(a), int(b))
        for a, b in tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    ]
    for role, span in spans.items():
        if span is None:
            continue
        token_start, token_end = offsets[positions[role]]
        start, end = span
        if role.endswith("_TEXT_START"):
            ok = token_start == start or prompt[token_start:start].isspace()
        elif role.endswith("_TEXT_END"):
            ok = token_end == end
        elif role.endswith("_FORERUNNER"):
            ok = (token_start, token_end) == (start, end)
        else:
            ok = input_ids[positions[role]] == label_ids[label_roles[role]]
        if not ok:
            return None
    if positions["QUERY_FORERUNNER"] != positions[END_ROLE]:
        return None
    return input_ids, positions


def _make_record(
    tokenizer: Any,
    rng: random.Random,
    record_id: int,
    task: str,
    k_shot: int,
    query_label: str,
    label_ids: dict[str, int],
) -> dict[str, Any] | None:
    """Sample one prompt and its relabelled counterfactual; None if a check fails."""
    labels = LABELS[task]
    make_text = _sentiment_text if task == "sentiment" else _topic_text
    demo_labels = _balanced_labels(rng, labels, k_shot)
    texts: list[str] = []
    for label in [*demo_labels, query_label]:
        text = make_text(rng, label)
        while text in texts:  # no demonstration repeats another or the query
            text = make_text(rng, label)
        texts.append(text)
    field = LABEL_FIELD[task]

    label_map = _derangement(rng, labels)
    flipped_labels = [label_map[label] for label in demo_labels]
    wrong_label = rng.choice([label for label in labels if label != query_label])

    prompt, spans, label_roles = _render(texts, demo_labels, field)
    flipped_prompt, flipped_spans, flipped_label_roles = _render(texts, flipped_labels, field)
    clean = _encode_checked(tokenizer, prompt, spans, label_roles, label_ids)
    flipped = _encode_checked(
        tokenizer, flipped_prompt, flipped_spans, flipped_label_roles, label_ids
    )
    if clean is None or flipped is None:
        return None
    clean_ids, roles = clean
    flipped_ids, flipped_roles = flipped
    if len(clean_ids) != len(flipped_ids) or roles != flipped_roles:
        return None

    return {
        "task": TASK_NAME,
        "id": record_id,
        "icl_task": task,
        "k_shot": k_shot,
        "prompt": prompt,
        "answer": " " + query_label,
        "wrong_answer": " " + wrong_label,
        "candidates": [" " + label for label in labels],
        "correct": [" " + query_label],
        "query_label": query_label,
        "demo_labels": demo_labels,
        "texts": {"demos": texts[:-1], "query": texts[-1]},
        "roles": roles,
        "counterfactuals": {
            "flipped_labels": {
                "prompt": flipped_prompt,
                "answer": " " + label_map[query_label],
                "wrong_answer": " " + query_label,
                "demo_labels": flipped_labels,
                "label_map": label_map,
                "roles": flipped_roles,
            }
        },
    }


def generate_icl(
    tokenizer: Any,
    n_prompts: int,
    seed: int,
    k_shot: int = 4,
    task: str = "sentiment",
    min_prompts: int | None = None,
) -> list[dict[str, Any]]:
    """Generate seeded k-shot classification prompts (Cho et al. 2024) for a tokenizer.

    Query labels cycle through the task's labels and are then shuffled, so each label is
    the answer of ``n_prompts // L`` or one more records. A record whose tokenization
    check fails (see module docstring) is resampled up to
    :data:`MAX_ATTEMPTS_PER_RECORD` times and otherwise dropped; ids stay contiguous.

    Each record is a JSON-serialisable dict::

        {"task": "icl", "id": int, "icl_task": "sentiment" | "topic", "k_shot": int,
         "prompt": str, "answer": " label", "wrong_answer": " other label",
         "candidates": [" label", ...all labels], "correct": [answer],
         "query_label": str, "demo_labels": [str] * k_shot,
         "texts": {"demos": [str] * k_shot, "query": str},
         "roles": {"DEMO_0_TEXT_START": int, ..., "QUERY_FORERUNNER": int, "END": int},
         "counterfactuals": {"flipped_labels": {"prompt": str, "answer": str,
             "wrong_answer": answer, "demo_labels": [...], "label_map": {...},
             "roles": {...}}}}

    Args:
        tokenizer: A fast Hugging Face tokenizer of the model under study.
        n_prompts: Number of records to generate.
        seed: Seed for :class:`random.Random`; the same arguments and tokenizer give the
            same records.
        k_shot: Number of demonstrations per prompt (0: the query alone, zero-shot).
        task: ``"sentiment"`` or ``"topic"``.
        min_prompts: Fewest records acceptable; defaults to ``n_prompts``.

    Returns:
        Between ``min_prompts`` and ``n_prompts`` records, ids ``0..len-1``.

    Raises:
        ValueError: If ``n_prompts`` < 1, ``k_shot`` < 0, ``min_prompts`` is not in
            ``[0, n_prompts]``, or ``task`` is unknown.
        TaskTooSmallError: If a label is not a single token for ``tokenizer``, or fewer
            than ``min_prompts`` records pass the tokenization checks.
    """
    if k_shot < 0:
        raise ValueError(f"k_shot must be at least 0, got {k_shot}")
    if task not in LABELS:
        raise ValueError(f"unknown ICL task {task!r}; expected one of {', '.join(LABELS)}")
    required = required_count(n_prompts, min_prompts)

    labels = LABELS[task]
    split = [label for label in labels if not is_single_token(tokenizer, " " + label)]
    if split:
        # None can be made: [] if none are required, else a TaskTooSmallError.
        return check_enough(
            f"{TASK_NAME}_{task}",  # the task's name in the config
            tokenizer,
            [],
            n_prompts,
            required,
            f"{task} labels {split} are not single tokens after a space",
        )
    label_ids = {
        label: int(tokenizer(" " + label, add_special_tokens=False)["input_ids"][0])
        for label in labels
    }

    rng = random.Random(seed)
    query_labels = [labels[index % len(labels)] for index in range(n_prompts)]
    rng.shuffle(query_labels)
    records: list[dict[str, Any]] = []
    for query_label in query_labels:
        for _attempt in range(MAX_ATTEMPTS_PER_RECORD):
            record = _make_record(
                tokenizer, rng, len(records), task, k_shot, query_label, label_ids
            )
            if record is not None:
                records.append(record)
                break

    return check_enough(
        f"{TASK_NAME}_{task}",
        tokenizer,
        records,
        n_prompts,
        required,
        f"{task} prompts whose role tokens merged with their neighbours were dropped",
    )
