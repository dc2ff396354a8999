"""Tests for the MCQA generator (circuit_repro.tasks.mcqa)."""

from __future__ import annotations

import string
from collections import Counter
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks import mcqa
from circuit_repro.tasks.base import TaskTooSmallError, is_single_token
from circuit_repro.tasks.mcqa import generate_mcqa

TOKENIZER_FIXTURES = ["smollm2_tokenizer", "gemma3_tokenizer", "random_tokenizer"]

# A multiple of 4 so every answer position is used equally often.
N_PROMPTS = 48


@pytest.fixture(params=TOKENIZER_FIXTURES)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """Each tokenizer fixture in turn."""
    return request.getfixturevalue(request.param)


def _records(tokenizer: Any, seed: int = 0, n: int = N_PROMPTS, **kwargs: Any) -> list[dict]:
    return generate_mcqa(tokenizer, n, seed=seed, **kwargs)


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def _decode_at(tokenizer: Any, ids: list[int], position: int) -> str:
    return tokenizer.decode([ids[position]]).strip()


def _expected_prompt(record: dict, labels: list[str], trailing_space: bool) -> str:
    lines = [f"Question: {record['question']}"]
    lines += [f"{label}. {option}" for label, option in zip(labels, record["options"], strict=True)]
    return "\n".join(lines) + "\nAnswer:" + (" " if trailing_space else "")


def _variants(record: dict) -> list[tuple[str, dict]]:
    """The clean record and each counterfactual, as (name, variant) pairs."""
    clean = {key: record[key] for key in ("prompt", "answer", "wrong_answer", "roles")}
    clean.update(candidates=record["candidates"], correct=record["correct"])
    clean.update(labels=record["labels"], same_length=True)
    return [("clean", clean), *record["counterfactuals"].items()]


# --- items -------------------------------------------------------------------------------


def test_items() -> None:
    assert len(mcqa.ITEMS) >= 40
    questions = [question for question, _correct, _distractors in mcqa.ITEMS]
    assert len(set(questions)) == len(questions)
    for question, correct, distractors in mcqa.ITEMS:
        assert question.endswith("?")
        assert len(distractors) == 3
        assert len({correct, *distractors}) == 4, question


def test_derangements_move_every_label() -> None:
    orders = mcqa._derangements("ABCD")
    assert len(orders) == 9
    assert "CADB" in orders
    assert all(all(a != b for a, b in zip(order, "ABCD", strict=True)) for order in orders)


# --- generator ---------------------------------------------------------------------------


def test_same_seed_gives_identical_records(tokenizer: Any) -> None:
    assert _records(tokenizer, seed=4) == _records(tokenizer, seed=4)


def test_different_seed_gives_different_records(tokenizer: Any) -> None:
    first = _records(tokenizer, seed=1)
    second = _records(tokenizer, seed=2)
    assert [r["prompt"] for r in first] != [r["prompt"] for r in second]
    assert [r["correct_position"] for r in first] != [r["correct_position"] for r in second]


def test_record_fields(tokenizer: Any) -> None:
    records = _records(tokenizer)
    assert [record["id"] for record in records] == list(range(N_PROMPTS))
    for record in records:
        question, correct_option, distractors = mcqa.ITEMS[record["item"]]
        position, wrong = record["correct_position"], record["wrong_position"]
        assert record["task"] == "mcqa"
        assert record["question"] == question
        assert record["options"][position] == correct_option
        assert sorted(record["options"]) == sorted([correct_option, *distractors])
        assert record["labels"] == ["A", "B", "C", "D"]
        assert record["prompt"] == _expected_prompt(record, record["labels"], False)
        assert record["candidates"] == [" A", " B", " C", " D"]
        assert record["answer"] == " " + "ABCD"[position]
        assert wrong != position
        assert record["wrong_answer"] == " " + "ABCD"[wrong]
        assert record["correct"] == [record["answer"]]
        for candidate in record["candidates"]:
            assert is_single_token(tokenizer, candidate)


def test_roles_point_at_the_right_tokens(tokenizer: Any) -> None:
    for record in _records(tokenizer):
        for name, variant in _variants(record):
            ids = _ids(tokenizer, variant["prompt"])
            roles = variant["roles"]
            order = [roles[f"{kind}_{i}"] for i in range(4) for kind in ("LABEL", "OPTION")]
            assert order == sorted(order) and len(set(order)) == 8, name
            for index in range(4):
                assert (
                    _decode_at(tokenizer, ids, roles[f"LABEL_{index}"])
                    == (variant["labels"][index])
                ), name
                first_piece = _decode_at(tokenizer, ids, roles[f"OPTION_{index}"])
                assert first_piece and record["options"][index].startswith(first_piece), name
            assert roles["END"] == len(ids) - 1
            assert roles["END"] > roles["OPTION_3"]


def test_answers_follow_the_prompt_as_their_own_token(tokenizer: Any) -> None:
    for record in _records(tokenizer, n=12):
        for name, variant in _variants(record):
            prompt_ids = tokenizer(variant["prompt"], add_special_tokens=False)["input_ids"]
            for answer in variant["candidates"]:
                assert is_single_token(tokenizer, answer), (name, answer)
                full = tokenizer(variant["prompt"] + answer, add_special_tokens=False)
                assert full["input_ids"][:-1] == prompt_ids, (name, answer)


def test_counterfactual_labels(tokenizer: Any) -> None:
    seen_letters: set[str] = set()
    for record in _records(tokenizer):
        position, wrong = record["correct_position"], record["wrong_position"]
        for name, variant in record["counterfactuals"].items():
            labels = variant["labels"]
            if name == "random_letters":
                assert len(set(labels)) == 4
                assert all(label in string.ascii_uppercase for label in labels)
                assert not set(labels) & set("ABCD")
                seen_letters.update(labels)
            elif name == "numbers":
                assert labels == ["1", "2", "3", "4"]
            else:
                assert sorted(labels) == ["A", "B", "C", "D"]
                assert all(a != b for a, b in zip(labels, "ABCD", strict=True))
            trailing_space = variant["prompt"].endswith(" ")
            assert trailing_space == (name == "numbers" and not variant["same_length"])
            space = "" if trailing_space else " "
            assert variant["candidates"] == [space + label for label in labels]
            assert variant["answer"] == space + labels[position]
            assert variant["wrong_answer"] == space + labels[wrong]
            assert variant["correct"] == [variant["answer"]]
            assert variant["prompt"] == _expected_prompt(record, labels, trailing_space)
    assert len(seen_letters) > 10  # the random letters really vary


def test_counterfactuals_differ_only_at_label_positions(tokenizer: Any) -> None:
    for record in _records(tokenizer):
        clean_ids = _ids(tokenizer, record["prompt"])
        labels = {record["roles"][f"LABEL_{i}"] for i in range(4)}
        for name, variant in record["counterfactuals"].items():
            ids = _ids(tokenizer, variant["prompt"])
            if variant["same_length"]:
                assert len(ids) == len(clean_ids), name
                assert variant["roles"] == record["roles"], name
            else:
                # Digit-per-token tokenizers: "Answer: " adds the space as its own token.
                assert name == "numbers"
                assert len(ids) == len(clean_ids) + 1
                assert tokenizer.decode(ids[-1:]) == " "
                assert variant["roles"] == {**record["roles"], "END": record["roles"]["END"] + 1}
                ids = ids[:-1]
            changed = {i for i, (a, b) in enumerate(zip(clean_ids, ids, strict=True)) if a != b}
            assert changed == labels, name


@pytest.mark.parametrize(
    ("fixture_name", "numbers_same_length"),
    [("smollm2_tokenizer", False), ("gemma3_tokenizer", False), ("random_tokenizer", True)],
)
def test_numbers_answer_form_depends_on_the_tokenizer(
    request: pytest.FixtureRequest, fixture_name: str, numbers_same_length: bool
) -> None:
    tokenizer = request.getfixturevalue(fixture_name)
    for record in _records(tokenizer, n=8):
        numbers = record["counterfactuals"]["numbers"]
        assert numbers["same_length"] is numbers_same_length
        assert record["counterfactuals"]["random_letters"]["same_length"]
        assert record["counterfactuals"]["shuffled"]["same_length"]


def test_gemma_positions_skip_bos(gemma3_tokenizer: Any) -> None:
    for record in _records(gemma3_tokenizer, n=8):
        assert _ids(gemma3_tokenizer, record["prompt"])[0] == gemma3_tokenizer.bos_token_id
        assert min(record["roles"].values()) >= 1


def test_answer_positions_are_balanced(tokenizer: Any) -> None:
    records = _records(tokenizer)
    counts = Counter(record["correct_position"] for record in records)
    assert counts == dict.fromkeys(range(4), N_PROMPTS // 4)
    # The positions are shuffled, not cycled in order.
    assert [r["correct_position"] for r in records] != [i % 4 for i in range(N_PROMPTS)]
    wrong_offsets = {(r["wrong_position"] - r["correct_position"]) % 4 for r in records}
    assert wrong_offsets == {1, 2, 3}


def test_every_question_is_used_before_any_repeats(smollm2_tokenizer: Any) -> None:
    records = _records(smollm2_tokenizer, n=2 * len(mcqa.ITEMS))
    first_pass = [record["item"] for record in records[: len(mcqa.ITEMS)]]
    assert sorted(first_pass) == list(range(len(mcqa.ITEMS)))
    assert set(Counter(record["item"] for record in records).values()) == {2}


def test_custom_labels(smollm2_tokenizer: Any) -> None:
    for record in _records(smollm2_tokenizer, n=8, labels="WXYZ"):
        assert record["candidates"] == [" W", " X", " Y", " Z"]
        assert record["prompt"] == _expected_prompt(record, ["W", "X", "Y", "Z"], False)
        random_letters = record["counterfactuals"]["random_letters"]["labels"]
        assert not set(random_letters) & set("WXYZ")
        assert sorted(record["counterfactuals"]["shuffled"]["labels"]) == ["W", "X", "Y", "Z"]


@pytest.mark.parametrize("labels", ["ABC", "AABC", "AB D", "ABCDE"])
def test_invalid_labels(smollm2_tokenizer: Any, labels: str) -> None:
    with pytest.raises(ValueError, match="labels"):
        generate_mcqa(smollm2_tokenizer, 4, seed=0, labels=labels)


def test_invalid_arguments(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="n_prompts"):
        generate_mcqa(smollm2_tokenizer, 0, seed=0)
    with pytest.raises(ValueError, match="min_prompts"):
        generate_mcqa(smollm2_tokenizer, 4, seed=0, min_prompts=5)


# --- tokenizers that cannot express the task ---------------------------------------------


def test_labels_that_are_not_single_tokens_raise(random_tokenizer: Any) -> None:
    # Greek capitals are two bytes each and were never merged by the offline BPE.
    with pytest.raises(TaskTooSmallError) as caught:
        generate_mcqa(random_tokenizer, 8, seed=0, labels="ΑΒΓΔ")
    message = str(caught.value)
    assert isinstance(caught.value, UserFacingError)
    assert "\n" not in message
    assert "'mcqa'" in message
    assert "'ΑΒΓΔ' are not single tokens" in message
    assert "(tasks.mcqa.enabled: false)" in message
    assert generate_mcqa(random_tokenizer, 8, seed=0, labels="ΑΒΓΔ", min_prompts=0) == []


def test_tokenizer_without_letters_raises() -> None:
    words = ["[UNK]", "Question", "Answer", ":", ".", "?"]
    backend = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="no-letters-test", unk_token="[UNK]"
    )
    with pytest.raises(TaskTooSmallError, match="only 0 other capital letters"):
        generate_mcqa(tokenizer, 8, seed=0)
