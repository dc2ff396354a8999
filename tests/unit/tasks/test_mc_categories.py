"""Tests for the multiple-choice category task (circuit_repro.tasks.mc_categories): the
train and test splits share no word, every question has one right option, and the
records are MCQA records for every tokenizer."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from circuit_repro.tasks import generate_task
from circuit_repro.tasks.mc_categories import (
    CATEGORIES,
    QUESTIONS_PER_WORD,
    category_items,
    generate_mc_categories,
    split_words,
)


@pytest.fixture(params=["smollm2_tokenizer", "gemma3_tokenizer", "random_tokenizer"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def category_of(word: str) -> str:
    (category,) = [c for c, members in CATEGORIES.items() if word in members]
    return category


def test_every_word_is_in_one_category_and_one_split():
    counts = Counter(word.lower() for members in CATEGORIES.values() for word in members)
    assert max(counts.values()) == 1, [w for w, n in counts.items() if n > 1]
    train, test = split_words("train"), split_words("test")
    for category, members in CATEGORIES.items():
        assert set(train[category]).isdisjoint(test[category])
        assert set(train[category]) | set(test[category]) == set(members)
        assert len(test[category]) >= 2
    assert split_words("test") == test  # fixed, not drawn per call


def test_questions_have_one_right_option_from_their_own_split():
    for split in ("train", "test"):
        words = {w for members in split_words(split).values() for w in members}
        items = category_items(split)
        assert len(items) == QUESTIONS_PER_WORD * len(words)
        for question, answer, distractors in items:
            asked = question.removeprefix("Which of these is ").removesuffix("?")
            assert category_of(answer) == asked
            assert asked not in {category_of(d) for d in distractors}
            assert {answer, *distractors} <= words


def test_test_prompts_never_show_a_training_word(tokenizer):
    trained = {w for members in split_words("train").values() for w in members}
    records = generate_mc_categories(tokenizer, 64, seed=0)
    assert len(records) == 64
    for record in records:
        assert record["task"] == "mc_categories"
        assert trained.isdisjoint(record["options"])
        assert record["options"][record["correct_position"]] in {
            w for members in split_words("test").values() for w in members
        }


def test_the_registry_generates_the_test_split(smollm2_tokenizer):
    records = generate_task("mc_categories", smollm2_tokenizer, {"n_prompts": 8}, seed=3)
    direct = generate_mc_categories(smollm2_tokenizer, 8, seed=3, split="test")
    assert [r.prompt for r in records] == [r["prompt"] for r in direct]
    assert [r.answer for r in records] == [r["answer"] for r in direct]


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be"):
        split_words("validation")  # type: ignore[arg-type]
