"""Multiple-choice category questions in the letter format of the MCQA task.

The post-training task of the training-dynamics paper (Park, Jeong and Kang 2025,
"Thinking Sparks!", who post-train on reasoning data), and fine-tuning data in the
letter format that the MCQA paper (Lieberum et al. 2023) analyses::

    Question: Which of these is a musical instrument?
    A. sofa
    B. sweater
    C. crimson
    D. flute
    Answer:                                   ->  " D"

Why categories: a small model already knows which word is an animal or a colour, but
it does not answer in the letter format (SmolLM2-135M is at chance on it). Fine-tuning
then has one thing to learn, pointing at the right option's letter, and the ability
appears abruptly, which is what the paper's analyses explain. Multiple-choice addition,
tried first, teaches the model addition as well: in the same number of steps it crept
from chance to about 0.45 without a clear jump, and the format did not carry over to
other questions.

Every word belongs to exactly one category, and the words of each category are dealt
into train and test by a fixed seeded shuffle (:data:`TEST_SHARE` to test): a test
question uses only test words, as its answer and as its distractors, so no word the
model was fine-tuned on appears in the questions it is analysed on. Records are MCQA
records (:func:`~circuit_repro.tasks.mcqa.generate_mcqa`, with its label mutations as
counterfactuals) whose ``task`` is ``mc_categories``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from circuit_repro.tasks.mcqa import Item, generate_mcqa

TASK_NAME = "mc_categories"

#: Category (as the question names it) -> its words. No word is in two categories, and
#: none has a common second meaning in another (no "orange", "organ", "violet").
CATEGORIES: dict[str, tuple[str, ...]] = {
    "an animal": (
        "dog", "cat", "horse", "cow", "sheep", "pig", "goat", "lion", "tiger", "bear",
        "wolf", "fox", "rabbit", "mouse", "deer", "monkey", "elephant", "zebra", "camel",
        "frog", "duck", "eagle", "owl", "shark", "whale", "snake", "giraffe", "donkey",
    ),
    "a fruit": (
        "apple", "banana", "grape", "lemon", "pear", "mango", "melon", "kiwi",
        "strawberry", "pineapple", "apricot", "coconut", "raspberry", "blueberry",
        "watermelon", "papaya",
    ),
    "a color": (
        "red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white",
        "gray", "beige", "crimson", "scarlet", "magenta",
    ),
    "a vehicle": (
        "car", "bus", "truck", "train", "bicycle", "boat", "ship", "airplane", "taxi",
        "tractor", "motorcycle", "van", "helicopter", "scooter", "submarine",
    ),
    "a piece of furniture": (
        "chair", "table", "sofa", "bed", "desk", "shelf", "cabinet", "stool", "bench",
        "couch", "dresser", "wardrobe", "bookcase", "armchair",
    ),
    "a part of the body": (
        "hand", "foot", "head", "arm", "leg", "nose", "ear", "eye", "mouth", "knee",
        "elbow", "finger", "shoulder", "ankle", "wrist", "chin",
    ),
    "a country": (
        "France", "Spain", "Italy", "Germany", "Japan", "China", "India", "Brazil",
        "Canada", "Mexico", "Egypt", "Kenya", "Peru", "Chile", "Norway", "Sweden",
        "Poland", "Greece",
    ),
    "a tool": (
        "hammer", "saw", "drill", "wrench", "screwdriver", "shovel", "axe", "pliers",
        "rake", "chisel",
    ),
    "a musical instrument": (
        "piano", "guitar", "violin", "drum", "flute", "trumpet", "harp", "cello", "banjo",
        "saxophone", "clarinet", "trombone",
    ),
    "a piece of clothing": (
        "shirt", "jacket", "coat", "dress", "skirt", "sock", "hat", "scarf", "glove",
        "sweater", "trousers", "blouse",
    ),
    "a vegetable": (
        "carrot", "potato", "onion", "cabbage", "lettuce", "broccoli", "spinach",
        "cucumber", "celery", "garlic", "pumpkin", "radish",
    ),
}  # fmt: skip
#: Share of each category's words held out for testing (never trained on).
TEST_SHARE = 0.25
#: Seed of the train/test split: fixed, so every run and every model splits alike.
SPLIT_SEED = 20250925
#: Questions per (category, answer word): each with other distractors.
QUESTIONS_PER_WORD = 6

Split = Literal["train", "test"]


def split_words(split: Split) -> dict[str, tuple[str, ...]]:
    """Each category's words in ``split``: a fixed seeded shuffle of the category's
    words, the first :data:`TEST_SHARE` (at least two) to test, the rest to train."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    words = {}
    for category, members in CATEGORIES.items():
        shuffled = list(members)
        random.Random(f"{SPLIT_SEED}:{category}").shuffle(shuffled)
        n_test = max(2, round(TEST_SHARE * len(shuffled)))
        words[category] = tuple(shuffled[:n_test] if split == "test" else shuffled[n_test:])
    return words


def category_items(split: Split) -> list[Item]:
    """Every question of one split: ``(question, answer word, three distractors)``.

    For each category and each of its words in the split, :data:`QUESTIONS_PER_WORD`
    questions whose distractors are words of three other categories, all from the same
    split (drawn with a seed fixed by the category and word)."""
    words = split_words(split)
    items: list[Item] = []
    for category, members in words.items():
        others = [c for c in words if c != category]
        for answer in members:
            rng = random.Random(f"{SPLIT_SEED}:{category}:{answer}")
            for _ in range(QUESTIONS_PER_WORD):
                distractors = tuple(rng.choice(words[c]) for c in rng.sample(others, 3))
                items.append((f"Which of these is {category}?", answer, distractors))  # type: ignore[arg-type]
    return items


def generate_mc_categories(
    tokenizer: Any,
    n_prompts: int,
    seed: int,
    min_prompts: int | None = None,
    split: Split = "test",
) -> list[dict[str, Any]]:
    """Seeded multiple-choice category prompts from one split (MCQA records; see
    :func:`~circuit_repro.tasks.mcqa.generate_mcqa` for the fields and the label
    mutations). The analyses read the ``test`` split; fine-tuning reads ``train``."""
    return generate_mcqa(
        tokenizer,
        n_prompts,
        seed,
        min_prompts=min_prompts,
        items=category_items(split),
        task_name=TASK_NAME,
    )
