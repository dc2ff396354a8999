"""Tests for the in-context classification generator (circuit_repro.tasks.icl)."""

from __future__ import annotations

import string
from collections import Counter
from typing import Any

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks import icl
from circuit_repro.tasks.base import TaskTooSmallError, is_single_token
from circuit_repro.tasks.icl import generate_icl

N_PROMPTS = 24  # a multiple of both label counts (2 and 4)

# (tokenizer fixture, task) combinations that must work; the random models' tokenizer
# has single tokens for " positive"/" negative" but not for the topic labels.
SUPPORTED = [
    ("smollm2_tokenizer", "sentiment"),
    ("smollm2_tokenizer", "topic"),
    ("gemma3_tokenizer", "sentiment"),
    ("gemma3_tokenizer", "topic"),
    ("random_tokenizer", "sentiment"),
]


@pytest.fixture(params=SUPPORTED, ids=lambda p: f"{p[0].split('_')[0]}-{p[1]}")
def setup(request: pytest.FixtureRequest) -> tuple[Any, str]:
    """A (tokenizer, task) pair the generator must support."""
    fixture_name, task = request.param
    return request.getfixturevalue(fixture_name), task


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def _decode(tokenizer: Any, ids: list[int], position: int) -> str:
    return tokenizer.decode([ids[position]])


def _char_level_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: no label is a single token."""
    vocab = {char: index for index, char in enumerate(["[UNK]", *string.printable])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="char-level-test", unk_token="[UNK]"
    )


# --- word lists --------------------------------------------------------------------------


def test_word_lists() -> None:
    assert len(icl.POSITIVE_WORDS) >= 15 and len(icl.NEGATIVE_WORDS) >= 15
    assert not set(icl.POSITIVE_WORDS) & set(icl.NEGATIVE_WORDS)
    assert not set(icl.NEUTRAL_NOUNS) & (set(icl.POSITIVE_WORDS) | set(icl.NEGATIVE_WORDS))
    assert set(icl.TOPIC_WORDS) == set(icl.LABELS["topic"])
    seen: set[str] = set()
    for words in icl.TOPIC_WORDS.values():
        assert len(words) >= 10
        assert not seen & set(words)  # no noun belongs to two topics
        seen |= set(words)


# --- generator ---------------------------------------------------------------------------


def test_same_seed_gives_identical_records(setup: tuple[Any, str]) -> None:
    tokenizer, task = setup
    assert generate_icl(tokenizer, N_PROMPTS, seed=4, task=task) == generate_icl(
        tokenizer, N_PROMPTS, seed=4, task=task
    )


def test_different_seed_gives_different_records(setup: tuple[Any, str]) -> None:
    tokenizer, task = setup
    first = [r["prompt"] for r in generate_icl(tokenizer, N_PROMPTS, seed=1, task=task)]
    second = [r["prompt"] for r in generate_icl(tokenizer, N_PROMPTS, seed=2, task=task)]
    assert first != second


def test_prompt_layout_and_answers(setup: tuple[Any, str]) -> None:
    tokenizer, task = setup
    labels = icl.LABELS[task]
    field = icl.LABEL_FIELD[task]
    for record in generate_icl(tokenizer, N_PROMPTS, seed=0, task=task):
        demos = record["texts"]["demos"]
        query = record["texts"]["query"]
        expected = "".join(
            f"sentence: {text}\n{field}: {label}\n"
            for text, label in zip(demos, record["demo_labels"], strict=True)
        )
        assert record["prompt"] == expected + f"sentence: {query}\n{field}:"
        assert len(set([*demos, query])) == len(demos) + 1
        assert record["answer"] == " " + record["query_label"]
        assert record["candidates"] == [" " + label for label in labels]
        assert record["correct"] == [record["answer"]]
        assert record["wrong_answer"] in record["candidates"]
        assert record["wrong_answer"] != record["answer"]
        for candidate in record["candidates"]:
            assert is_single_token(tokenizer, candidate)


def test_sentiment_texts_carry_their_label(smollm2_tokenizer: Any) -> None:
    for record in generate_icl(smollm2_tokenizer, 40, seed=0):
        texts = [*record["texts"]["demos"], record["texts"]["query"]]
        labels = [*record["demo_labels"], record["query_label"]]
        for text, label in zip(texts, labels, strict=True):
            words = set(text.replace(",", " ").split())
            own, other = (
                (icl.POSITIVE_WORDS, icl.NEGATIVE_WORDS)
                if label == "positive"
                else (icl.NEGATIVE_WORDS, icl.POSITIVE_WORDS)
            )
            assert words & set(own) and not words & set(other), (text, label)


def test_roles_point_at_the_right_tokens(setup: tuple[Any, str]) -> None:
    tokenizer, task = setup
    k_shot = 4
    for record in generate_icl(tokenizer, N_PROMPTS, seed=0, task=task, k_shot=k_shot):
        ids = _ids(tokenizer, record["prompt"])
        roles = record["roles"]
        texts = [*record["texts"]["demos"], record["texts"]["query"]]
        prefixes = [f"DEMO_{i}" for i in range(k_shot)] + ["QUERY"]
        expected_roles = {f"{p}_{s}" for p in prefixes for s in ("TEXT_START", "TEXT_END")}
        expected_roles |= {f"{p}_FORERUNNER" for p in prefixes}
        expected_roles |= {f"DEMO_{i}_LABEL" for i in range(k_shot)} | {"END"}
        assert set(roles) == expected_roles
        previous = -1
        for index, (prefix, text) in enumerate(zip(prefixes, texts, strict=True)):
            start, end = roles[f"{prefix}_TEXT_START"], roles[f"{prefix}_TEXT_END"]
            assert previous < start <= end < roles[f"{prefix}_FORERUNNER"]
            assert tokenizer.decode(ids[start : end + 1]).strip() == text
            assert _decode(tokenizer, ids, roles[f"{prefix}_FORERUNNER"]) == ":"
            if prefix != "QUERY":
                label = roles[f"{prefix}_LABEL"]
                assert label == roles[f"{prefix}_FORERUNNER"] + 1
                assert _decode(tokenizer, ids, label) == " " + record["demo_labels"][index]
                previous = label
        assert roles["QUERY_FORERUNNER"] == roles["END"] == len(ids) - 1


@pytest.mark.parametrize(("task", "k_shot"), [("sentiment", 4), ("sentiment", 3), ("topic", 4)])
def test_labels_are_balanced(smollm2_tokenizer: Any, task: str, k_shot: int) -> None:
    labels = icl.LABELS[task]
    records = generate_icl(smollm2_tokenizer, N_PROMPTS, seed=0, task=task, k_shot=k_shot)
    for record in records:
        counts = Counter(record["demo_labels"])
        assert set(counts.values()) <= {k_shot // len(labels), k_shot // len(labels) + 1}
        assert sum(counts.values()) == k_shot
    queries = Counter(record["query_label"] for record in records)
    assert queries == dict.fromkeys(labels, N_PROMPTS // len(labels))
    # The demonstration order is shuffled, not fixed.
    assert len({tuple(record["demo_labels"]) for record in records}) > 1


def test_flipped_labels_counterfactual(setup: tuple[Any, str]) -> None:
    tokenizer, task = setup
    for record in generate_icl(tokenizer, N_PROMPTS, seed=0, task=task):
        flipped = record["counterfactuals"]["flipped_labels"]
        label_map = flipped["label_map"]
        assert sorted(label_map) == sorted(label_map.values()) == sorted(icl.LABELS[task])
        assert all(source != target for source, target in label_map.items())
        assert flipped["demo_labels"] == [label_map[label] for label in record["demo_labels"]]
        assert flipped["answer"] == " " + label_map[record["query_label"]]
        assert flipped["wrong_answer"] == record["answer"]
        clean_ids = _ids(tokenizer, record["prompt"])
        ids = _ids(tokenizer, flipped["prompt"])
        assert len(ids) == len(clean_ids)
        assert flipped["roles"] == record["roles"]
        changed = {i for i, (a, b) in enumerate(zip(clean_ids, ids, strict=True)) if a != b}
        label_positions = {v for k, v in record["roles"].items() if k.endswith("_LABEL")}
        assert changed == label_positions


def test_topic_is_too_small_for_the_random_tokenizer(random_tokenizer: Any) -> None:
    with pytest.raises(TaskTooSmallError, match="topic labels .* not single tokens"):
        generate_icl(random_tokenizer, 10, seed=0, task="topic")


def test_too_small_for_char_level_tokenizer() -> None:
    with pytest.raises(TaskTooSmallError) as caught:
        generate_icl(_char_level_tokenizer(), 12, seed=0)
    message = str(caught.value)
    assert isinstance(caught.value, UserFacingError)
    assert "\n" not in message
    assert "task 'icl_sentiment'" in message and "char-level-test" in message
    assert message.endswith("or disable the task (tasks.icl_sentiment.enabled: false)")
    assert "0 of 12" in message
    assert generate_icl(_char_level_tokenizer(), 12, seed=0, min_prompts=0) == []


def test_zero_shot_is_the_query_alone(smollm2_tokenizer: Any) -> None:
    records = generate_icl(smollm2_tokenizer, 6, seed=0, k_shot=0)
    assert len(records) == 6
    for record in records:
        assert record["prompt"].startswith("sentence: ")
        assert record["prompt"].count("\n") == 1
        assert record["demo_labels"] == []
        assert set(record["roles"]) == {
            "QUERY_TEXT_START",
            "QUERY_TEXT_END",
            "QUERY_FORERUNNER",
            "END",
        }


def test_invalid_arguments(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="n_prompts"):
        generate_icl(smollm2_tokenizer, 0, seed=0)
    with pytest.raises(ValueError, match="k_shot"):
        generate_icl(smollm2_tokenizer, 4, seed=0, k_shot=-1)
    with pytest.raises(ValueError, match="unknown ICL task"):
        generate_icl(smollm2_tokenizer, 4, seed=0, task="emotion")
    with pytest.raises(ValueError, match="min_prompts"):
        generate_icl(smollm2_tokenizer, 4, seed=0, min_prompts=5)
