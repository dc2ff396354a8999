"""Multiple-choice question answering (MCQA) prompts, after Lieberum et al. (2023).

Lieberum, Rahtz, Kramár, Nanda, Irving, Shah and Mikulik, "Does Circuit Analysis
Interpretability Scale? Evidence from Multiple Choice Capabilities in Chinchilla",
arXiv:2307.09458. The model sees a question with four labelled options and must name
the label of the correct one::

    Question: What color is grass?
    A. Blue
    B. Green
    C. Red
    D. Yellow
    Answer:                                   ->  " B"

Lieberum et al. used MMLU with Chinchilla 70B; a small model would be near chance
there, so the questions here are ones a small model is likely to know (:data:`ITEMS`):
colours of familiar things, capitals of well-known countries, one-digit arithmetic and
facts about animals. The correct option sits at each of the four positions equally
often across the generated prompts; the three distractors fill the other positions in a
seeded random order.

Each record carries the paper's label mutations as counterfactuals: the same question
and options in the same order, with other labels:

* ``random_letters``: four random distinct capital letters other than the clean labels
  (e.g. ``Q. / X. / F. / M.``);
* ``numbers``: ``1. / 2. / 3. / 4.``;
* ``shuffled``: the clean labels in a permuted order that moves every label (e.g.
  ``C. / A. / D. / B.``), so the answer letter changes while the content does not.

Each counterfactual has its own ``answer`` (the correct option's label under that
labelling), ``wrong_answer`` (the same distractor option's label), ``candidates`` and
``roles``. Labels are single tokens, so ``random_letters`` and ``shuffled`` have
exactly as many tokens as the clean prompt and differ only at the four label positions.
``numbers`` does too when ``" 1"`` is a single token; tokenizers that write every digit
separately (SmolLM2, Gemma) encode ``"Answer: 1"`` as ``"Answer"``, ``":"``, ``" "``,
``"1"``, so for them the ``numbers`` prompt ends with ``"Answer: "`` (the space is a token
of its own), the answers are ``"1"``..``"4"`` without a space, and the prompt is one token
longer; its ``same_length`` field says which case applies.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Sequence
from typing import Any

from circuit_repro.tasks.base import (
    END_ROLE,
    CharSpan,
    check_enough,
    encode_with_roles,
    is_single_token,
    required_count,
    single_token_id,
)

TASK_NAME = "mcqa"

#: Options per question.
N_OPTIONS = 4

#: ``(question, correct option, three distractors)``. Options are short and written as
#: they appear after the label ("A. Green").
ITEMS: tuple[tuple[str, str, tuple[str, str, str]], ...] = (
    # Colours of familiar things.
    ("What color is grass?", "Green", ("Blue", "Red", "Yellow")),
    ("What color is the sky on a clear day?", "Blue", ("Green", "Brown", "Orange")),
    ("What color is snow?", "White", ("Black", "Green", "Red")),
    ("What color is a ripe banana?", "Yellow", ("Blue", "Purple", "Black")),
    ("What color is coal?", "Black", ("White", "Yellow", "Pink")),
    ("What color is blood?", "Red", ("Green", "Blue", "White")),
    ("What color is a carrot?", "Orange", ("Blue", "Purple", "Gray")),
    ("What color is milk?", "White", ("Red", "Green", "Black")),
    ("What color is a lemon?", "Yellow", ("Blue", "Black", "Purple")),
    ("What color is a ripe tomato?", "Red", ("Blue", "White", "Purple")),
    ("What color are the leaves of a tree in summer?", "Green", ("Blue", "White", "Pink")),
    ("What color is chocolate?", "Brown", ("Green", "Blue", "White")),
    # Capitals of well-known countries.
    ("What is the capital of France?", "Paris", ("London", "Berlin", "Madrid")),
    ("What is the capital of Germany?", "Berlin", ("Paris", "Rome", "Vienna")),
    ("What is the capital of Italy?", "Rome", ("Madrid", "Paris", "Athens")),
    ("What is the capital of Spain?", "Madrid", ("Lisbon", "Rome", "Paris")),
    ("What is the capital of Japan?", "Tokyo", ("Beijing", "Seoul", "Bangkok")),
    ("What is the capital of England?", "London", ("Paris", "Dublin", "Berlin")),
    ("What is the capital of Russia?", "Moscow", ("Warsaw", "Berlin", "Vienna")),
    ("What is the capital of China?", "Beijing", ("Tokyo", "Seoul", "Bangkok")),
    ("What is the capital of Egypt?", "Cairo", ("Nairobi", "Athens", "Rome")),
    ("What is the capital of Greece?", "Athens", ("Rome", "Cairo", "Madrid")),
    ("What is the capital of Canada?", "Ottawa", ("London", "Paris", "Dublin")),
    ("What is the capital of Ireland?", "Dublin", ("London", "Oslo", "Paris")),
    ("What is the capital of Austria?", "Vienna", ("Berlin", "Budapest", "Rome")),
    ("What is the capital of Portugal?", "Lisbon", ("Madrid", "Rome", "Paris")),
    # One-digit arithmetic.
    ("What is 2 + 3?", "5", ("4", "6", "7")),
    ("What is 1 + 1?", "2", ("3", "1", "4")),
    ("What is 4 + 4?", "8", ("6", "7", "9")),
    ("What is 3 + 3?", "6", ("5", "7", "8")),
    ("What is 5 + 4?", "9", ("8", "7", "6")),
    ("What is 2 + 2?", "4", ("3", "5", "6")),
    ("What is 7 - 2?", "5", ("4", "6", "3")),
    ("What is 9 - 3?", "6", ("5", "7", "4")),
    ("What is 3 + 4?", "7", ("6", "8", "5")),
    ("What is 8 - 5?", "3", ("2", "4", "5")),
    ("What is 2 * 3?", "6", ("5", "8", "9")),
    ("What is 6 + 2?", "8", ("7", "9", "6")),
    # Animals: sounds and kinds.
    ("What sound does a dog make?", "Bark", ("Moo", "Meow", "Quack")),
    ("What sound does a cat make?", "Meow", ("Bark", "Moo", "Oink")),
    ("What sound does a cow make?", "Moo", ("Bark", "Quack", "Meow")),
    ("What sound does a duck make?", "Quack", ("Moo", "Bark", "Meow")),
    ("Which of these animals is a bird?", "Eagle", ("Dog", "Horse", "Shark")),
    ("Which of these animals is a fish?", "Shark", ("Cat", "Eagle", "Horse")),
    ("Which of these animals can fly?", "Bird", ("Dog", "Cow", "Pig")),
    ("Which of these animals lives in water?", "Fish", ("Cat", "Horse", "Goat")),
    ("Which animal has a very long neck?", "Giraffe", ("Pig", "Dog", "Mouse")),
    ("Which animal is known as the king of the jungle?", "Lion", ("Mouse", "Duck", "Sheep")),
    ("How many legs does a dog have?", "4", ("2", "6", "8")),
    ("How many legs does a spider have?", "8", ("4", "6", "2")),
    ("Which animal gives us wool?", "Sheep", ("Dog", "Fish", "Cat")),
    ("Which animal lays eggs?", "Chicken", ("Dog", "Cow", "Horse")),
)

#: Mutations of the labels, in the order they appear in ``counterfactuals``.
MUTATIONS: tuple[str, ...] = ("random_letters", "numbers", "shuffled")

#: Labels of the ``numbers`` mutation.
NUMBER_LABELS = "1234"

#: How many times one record slot is resampled when its tokenization check fails.
MAX_ATTEMPTS_PER_RECORD = 20


def render_prompt(
    question: str, options: Sequence[str], labels: Sequence[str], space_before_answer: bool
) -> tuple[str, dict[str, CharSpan]]:
    """Write one MCQA prompt and record where its labels and options are.

    Args:
        question: The question text.
        options: The four options, in display order.
        labels: The four labels, in display order.
        space_before_answer: Whether the prompt ends with ``"Answer: "`` (for answers
            without a leading space) instead of ``"Answer:"``.

    Returns:
        The prompt and character spans ``LABEL_i`` and ``OPTION_i``.
    """
    spans: dict[str, CharSpan] = {}
    text = f"Question: {question}"
    for index, (label, option) in enumerate(zip(labels, options, strict=True)):
        text += "\n"
        spans[f"LABEL_{index}"] = (len(text), len(text) + len(label))
        text += label + ". "
        spans[f"OPTION_{index}"] = (len(text), len(text) + len(option))
        text += option
    text += "\nAnswer:" + (" " if space_before_answer else "")
    return text, spans


def _answer_style(tokenizer: Any, labels: Sequence[str]) -> tuple[bool, list[str]] | None:
    """How answers with these labels are written, or None if no single-token form works.

    Returns:
        ``(space_before_answer, answers)``: answers are ``" A"`` style when every label
        with a leading space is a single token, otherwise the bare labels after a prompt
        ending in a space.
    """
    spaced = [" " + label for label in labels]
    if all(is_single_token(tokenizer, answer) for answer in spaced):
        return False, spaced
    if all(is_single_token(tokenizer, label) for label in labels):
        return True, list(labels)
    return None


def _build_variant(
    tokenizer: Any,
    question: str,
    options: Sequence[str],
    labels: Sequence[str],
    correct_position: int,
    wrong_position: int,
) -> dict[str, Any] | None:
    """Prompt, answers and roles for one labelling; None when a tokenization check fails."""
    style = _answer_style(tokenizer, labels)
    if style is None:
        return None
    space_before_answer, candidates = style
    prompt, spans = render_prompt(question, options, labels, space_before_answer)
    role_spans: dict[str, CharSpan | None] = {**spans, END_ROLE: None}
    input_ids, roles = encode_with_roles(tokenizer, prompt, role_spans)
    for index, label in enumerate(labels):
        # The label must be its own token, not merged with the newline or the dot.
        if not is_single_token(tokenizer, label):
            return None
        if input_ids[roles[f"LABEL_{index}"]] != single_token_id(tokenizer, label):
            return None
    answer = candidates[correct_position]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if list(full_ids) != [*prompt_ids, single_token_id(tokenizer, answer)]:
        return None
    return {
        "prompt": prompt,
        "answer": answer,
        "wrong_answer": candidates[wrong_position],
        "candidates": candidates,
        "correct": [answer],
        "labels": list(labels),
        "roles": roles,
        "n_tokens": len(input_ids),
    }


def _derangements(labels: str) -> list[str]:
    """All orderings of ``labels`` that move every label, in lexicographic order."""
    return [
        "".join(order)
        for order in itertools.permutations(labels)
        if all(a != b for a, b in zip(order, labels, strict=True))
    ]


#: One question: ``(question, correct option, three distractors)``.
Item = tuple[str, str, tuple[str, str, str]]


def _make_record(
    tokenizer: Any,
    rng: random.Random,
    record_index: int,
    item_index: int,
    correct_position: int,
    labels: str,
    spare_letters: Sequence[str],
    items: Sequence[Item],
    task_name: str,
) -> dict[str, Any] | None:
    """Build one record; None when a tokenization check fails."""
    question, correct_option, distractors = items[item_index]
    shuffled_distractors = rng.sample(distractors, len(distractors))
    options = list(shuffled_distractors)
    options.insert(correct_position, correct_option)
    wrong_position = rng.choice([i for i in range(N_OPTIONS) if i != correct_position])
    label_sets = {
        "random_letters": "".join(rng.sample(list(spare_letters), N_OPTIONS)),
        "numbers": NUMBER_LABELS,
        "shuffled": rng.choice(_derangements(labels)),
    }

    clean = _build_variant(tokenizer, question, options, labels, correct_position, wrong_position)
    if clean is None:
        return None
    counterfactuals = {}
    for mutation in MUTATIONS:
        variant = _build_variant(
            tokenizer, question, options, label_sets[mutation], correct_position, wrong_position
        )
        if variant is None:
            return None
        variant["same_length"] = variant.pop("n_tokens") == clean["n_tokens"]
        if mutation != "numbers" and not variant["same_length"]:
            return None
        counterfactuals[mutation] = variant

    return {
        "task": task_name,
        "id": record_index,
        "prompt": clean["prompt"],
        "answer": clean["answer"],
        "wrong_answer": clean["wrong_answer"],
        "candidates": clean["candidates"],
        "correct": clean["correct"],
        "labels": list(labels),
        "item": item_index,
        "question": question,
        "options": options,
        "correct_position": correct_position,
        "wrong_position": wrong_position,
        "roles": clean["roles"],
        "counterfactuals": counterfactuals,
    }


def generate_mcqa(
    tokenizer: Any,
    n_prompts: int,
    seed: int,
    min_prompts: int | None = None,
    labels: str = "ABCD",
    items: Sequence[Item] = ITEMS,
    task_name: str = TASK_NAME,
) -> list[dict[str, Any]]:
    """Generate seeded 4-option MCQA prompts (Lieberum et al. 2023) for a tokenizer.

    Questions are dealt from a seeded shuffle of ``items`` (:data:`ITEMS`), reshuffled after each
    pass, so every question is used before any repeats. The positions of the correct
    option are a seeded shuffle of ``0, 1, 2, 3, 0, 1, ...`` (``n_prompts`` entries), so
    each position is correct ``n_prompts / 4`` times (exactly when ``n_prompts`` is a
    multiple of 4). ``wrong_answer`` is the label of one distractor chosen at random;
    every counterfactual uses the same distractor option. A record whose prompts fail
    the tokenization check (a label is not its own token, the answer merges with the
    prompt's end, or a mutation other than ``numbers`` changes the length) is resampled
    with another question at the same correct position, up to
    :data:`MAX_ATTEMPTS_PER_RECORD` times, and otherwise dropped; ids stay contiguous.

    Each record is a JSON-serialisable dict::

        {"task": "mcqa", "id": int, "prompt": str, "answer": " B", "wrong_answer": " D",
         "candidates": [" A", " B", " C", " D"], "correct": [" B"],
         "labels": ["A", "B", "C", "D"], "item": int, "question": str,
         "options": [str, str, str, str], "correct_position": 1, "wrong_position": 3,
         "roles": {"LABEL_0": int, "OPTION_0": int, ..., "LABEL_3": int,
                   "OPTION_3": int, "END": int},
         "counterfactuals": {
             name: {"prompt": str, "answer": str, "wrong_answer": str,
                    "candidates": [...], "correct": [...], "labels": [...],
                    "roles": {...}, "same_length": bool}
             for name in ("random_letters", "numbers", "shuffled")}}

    Roles index ``tokenizer(prompt)["input_ids"]`` with default special tokens:
    ``LABEL_i`` is the label token of the i-th displayed option, ``OPTION_i`` the first
    token of its text and ``END`` the prompt's last token (``":"``, or the space token
    of a ``numbers`` prompt that ends in ``"Answer: "``).

    Args:
        tokenizer: A fast Hugging Face tokenizer of the model under study.
        n_prompts: Number of records to generate.
        seed: Seed for :class:`random.Random`; the same seed and tokenizer give the same
            records.
        min_prompts: Fewest records acceptable; defaults to ``n_prompts``.
        labels: The four clean labels, distinct characters (``"ABCD"`` as in the paper).
            ``random_letters`` draws from the other capital letters.
        items: The questions (:data:`ITEMS`; other tasks in this format pass theirs).
        task_name: The records' ``task`` field.

    Returns:
        Between ``min_prompts`` and ``n_prompts`` records, ids ``0..len-1``.

    Raises:
        ValueError: If ``n_prompts`` < 1, ``min_prompts`` is not in ``[0, n_prompts]``,
            or ``labels`` is not four distinct non-space characters.
        TaskTooSmallError: If fewer than ``min_prompts`` records can be made, e.g.
            because the labels are not single tokens.
    """
    required = required_count(n_prompts, min_prompts)
    if len(labels) != N_OPTIONS or len(set(labels)) != N_OPTIONS or not labels.isprintable():
        raise ValueError(f"labels must be {N_OPTIONS} distinct characters, got {labels!r}")
    if any(label.isspace() for label in labels):
        raise ValueError(f"labels must not contain whitespace, got {labels!r}")

    spare_letters = [
        letter
        for letter in string.ascii_uppercase
        if letter not in labels
        and is_single_token(tokenizer, letter)
        and is_single_token(tokenizer, " " + letter)
    ]
    problems = []
    if _answer_style(tokenizer, labels) is None:
        problems.append(f"the labels {labels!r} are not single tokens")
    if _answer_style(tokenizer, NUMBER_LABELS) is None:
        problems.append(f"the labels {NUMBER_LABELS!r} are not single tokens")
    if len(spare_letters) < N_OPTIONS:
        problems.append(
            f"only {len(spare_letters)} other capital letters are single tokens, "
            f"random_letters needs {N_OPTIONS}"
        )
    if problems:
        # None can be made: [] if none are required, else a TaskTooSmallError.
        return check_enough(task_name, tokenizer, [], n_prompts, required, "; ".join(problems))

    rng = random.Random(seed)
    positions = [slot % N_OPTIONS for slot in range(n_prompts)]
    rng.shuffle(positions)
    deck: list[int] = []
    records: list[dict[str, Any]] = []
    for correct_position in positions:
        for _attempt in range(MAX_ATTEMPTS_PER_RECORD):
            if not deck:
                deck = rng.sample(range(len(items)), len(items))
            item_index = deck.pop()
            record = _make_record(
                tokenizer, rng, len(records), item_index, correct_position, labels,
                spare_letters, items, task_name,
            )  # fmt: skip
            if record is not None:
                records.append(record)
                break

    return check_enough(
        task_name,
        tokenizer,
        records,
        n_prompts,
        required,
        f"labels {labels!r}, {len(items)} questions",
    )
