"""Tests for the greater-than generator and metric (circuit_repro.tasks.greater_than)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks import greater_than as gt
from circuit_repro.tasks.base import TaskTooSmallError, single_token_id
from circuit_repro.tasks.greater_than import (
    detect_tokenization,
    generate_greater_than,
    probability_difference,
)

PER_DIGIT_TOKENIZERS = ["smollm2_tokenizer", "gemma3_tokenizer"]
DIGITS = [str(d) for d in range(10)]
TWO_DIGITS = [f"{k:02d}" for k in range(100)]


def _word_level_tokenizer(numbers: bool = True, with_01: bool = True) -> Any:
    """A GPT-2-like tokenizer for years: ``"1732"`` -> ``"17"``, ``"32"`` (two-digit).

    Words of the template and nouns are whole tokens; a run of digits is cut into pairs.
    Offsets exclude the space before a word, the other convention from byte-level BPE.
    """
    words = {"The", "lasted", "from", "the", "year", "to", *gt.NOUNS}
    if numbers:
        words.update(number for number in TWO_DIGITS if with_01 or number != "01")
    vocab = {word: index for index, word in enumerate(["[UNK]", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r"\d\d"), "isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="two-digit-test", unk_token="[UNK]"
    )


@pytest.fixture(params=[*PER_DIGIT_TOKENIZERS, "two_digit"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """SmolLM2 and Gemma 3 (per-digit years) and a two-digit (GPT-2 style) tokenizer."""
    if request.param == "two_digit":
        return _word_level_tokenizer()
    return request.getfixturevalue(request.param)


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def _decode_at(tokenizer: Any, ids: list[int], position: int) -> str:
    return tokenizer.decode([ids[position]]).strip()


# --- tokenization detection --------------------------------------------------------------


@pytest.mark.parametrize("fixture_name", PER_DIGIT_TOKENIZERS)
def test_smollm2_and_gemma_write_years_digit_by_digit(
    request: pytest.FixtureRequest, fixture_name: str
) -> None:
    tokenizer = request.getfixturevalue(fixture_name)
    assert detect_tokenization(tokenizer) == gt.PER_DIGIT
    pieces = [
        tokenizer.decode([i]) for i in tokenizer(" 1745", add_special_tokens=False)["input_ids"]
    ]
    assert pieces[-4:] == ["1", "7", "4", "5"]


def test_two_digit_and_unusable_tokenizers_are_detected(random_tokenizer: Any) -> None:
    assert detect_tokenization(_word_level_tokenizer()) == gt.TWO_DIGIT
    # The offline BPE of the random models writes " 17" + "45", as GPT-2 does.
    assert detect_tokenization(random_tokenizer) == gt.TWO_DIGIT
    assert detect_tokenization(_word_level_tokenizer(numbers=False)) is None


# --- generator ---------------------------------------------------------------------------


def test_same_seed_gives_identical_records(tokenizer: Any) -> None:
    assert generate_greater_than(tokenizer, 40, seed=3) == generate_greater_than(
        tokenizer, 40, seed=3
    )


def test_different_seed_gives_different_records(tokenizer: Any) -> None:
    first = [record["prompt"] for record in generate_greater_than(tokenizer, 40, seed=1)]
    second = [record["prompt"] for record in generate_greater_than(tokenizer, 40, seed=2)]
    assert first != second


def test_record_fields_and_answer_sets(tokenizer: Any) -> None:
    records = generate_greater_than(tokenizer, 60, seed=0)
    assert [record["id"] for record in records] == list(range(60))
    tokenization = detect_tokenization(tokenizer)
    for record in records:
        year = record["year"]
        assert record["task"] == "greater_than"
        assert record["tokenization"] == tokenization
        assert record["noun"] in gt.NOUNS
        assert record["prompt"] == (
            f"The {record['noun']} lasted from the year 17{year:02d} to the year 17"
        )
        candidates, correct = record["candidates"], record["correct"]
        incorrect = record["incorrect"]
        assert record["answer"] in correct
        assert set(correct) < set(candidates)
        assert record["wrong_answer"] in candidates
        assert record["wrong_answer"] not in correct
        assert sorted(correct + incorrect) == sorted(candidates)
        assert len(set(candidates)) == len(candidates)
        if tokenization == gt.PER_DIGIT:
            tens = year // 10
            assert 10 <= year <= 89
            assert candidates == [d for d in DIGITS if d != str(tens)]  # equal digit left out
            assert correct == [str(d) for d in range(tens + 1, 10)]
            assert incorrect == [str(d) for d in range(tens)]
            assert (record["answer"], record["wrong_answer"]) == (str(tens + 1), str(tens - 1))
        else:
            assert 2 <= year <= 98
            assert candidates == TWO_DIGITS
            assert correct == TWO_DIGITS[year + 1 :]
            assert (record["answer"], record["wrong_answer"]) == (
                f"{year + 1:02d}",
                f"{year:02d}",
            )


def test_per_digit_example_1732(smollm2_tokenizer: Any) -> None:
    record = gt._make_record(smollm2_tokenizer, 0, "war", 32, gt.PER_DIGIT, TWO_DIGITS)
    assert record is not None
    assert record["prompt"] == "The war lasted from the year 1732 to the year 17"
    assert record["candidates"] == ["0", "1", "2", "4", "5", "6", "7", "8", "9"]
    assert record["correct"] == ["4", "5", "6", "7", "8", "9"]
    assert (record["answer"], record["wrong_answer"]) == ("4", "2")


def test_roles_point_at_the_right_tokens(tokenizer: Any) -> None:
    for record in generate_greater_than(tokenizer, 60, seed=0):
        ids = _ids(tokenizer, record["prompt"])
        roles = record["roles"]
        digits = f"{record['year']:02d}"
        assert roles["END"] == len(ids) - 1
        if record["tokenization"] == gt.PER_DIGIT:
            assert _decode_at(tokenizer, ids, roles["CENTURY"]) == "1"
            assert _decode_at(tokenizer, ids, roles["CENTURY"] + 1) == "7"
            assert roles["YY"] == roles["CENTURY"] + 2
            assert _decode_at(tokenizer, ids, roles["YY"]) == digits[0]
            assert _decode_at(tokenizer, ids, roles["YY"] + 1) == digits[1]
            assert _decode_at(tokenizer, ids, roles["END"]) == "7"
        else:
            assert _decode_at(tokenizer, ids, roles["CENTURY"]) == "17"
            assert roles["YY"] == roles["CENTURY"] + 1
            assert _decode_at(tokenizer, ids, roles["YY"]) == digits
            assert _decode_at(tokenizer, ids, roles["END"]) == "17"


def test_answers_follow_the_prompt_as_their_own_token(tokenizer: Any) -> None:
    for record in generate_greater_than(tokenizer, 20, seed=0):
        prompt_ids = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        for continuation in (record["answer"], record["wrong_answer"]):
            full = tokenizer(record["prompt"] + continuation, add_special_tokens=False)
            assert full["input_ids"] == [*prompt_ids, single_token_id(tokenizer, continuation)]


def test_corrupted_01_counterfactual(tokenizer: Any) -> None:
    for record in generate_greater_than(tokenizer, 60, seed=0):
        counterfactual = record["counterfactuals"]["01"]
        assert counterfactual["year"] == 1
        assert counterfactual["prompt"] == record["prompt"].replace(
            f"17{record['year']:02d}", "1701", 1
        )
        clean_ids = _ids(tokenizer, record["prompt"])
        ids = _ids(tokenizer, counterfactual["prompt"])
        assert len(ids) == len(clean_ids)
        assert counterfactual["roles"] == record["roles"]
        changed = {i for i, (a, b) in enumerate(zip(clean_ids, ids, strict=True)) if a != b}
        yy = record["roles"]["YY"]
        assert yy in changed
        allowed = {yy, yy + 1} if record["tokenization"] == gt.PER_DIGIT else {yy}
        assert changed <= allowed
        assert _decode_at(tokenizer, ids, yy) == ("0" if len(allowed) == 2 else "01")


def test_years_are_used_evenly(smollm2_tokenizer: Any) -> None:
    n = 2 * len(gt.PER_DIGIT_YEARS)
    records = generate_greater_than(smollm2_tokenizer, n, seed=0)
    counts = Counter(record["year"] for record in records)
    assert set(counts) == set(gt.PER_DIGIT_YEARS)
    assert set(counts.values()) == {2}
    assert len({record["noun"] for record in records}) == len(gt.NOUNS)


def test_two_digit_years_cover_the_paper_range() -> None:
    records = generate_greater_than(_word_level_tokenizer(), len(gt.YEARS), seed=0)
    assert sorted(record["year"] for record in records) == list(range(2, 99))


# --- tokenizers that cannot express the task ---------------------------------------------


def test_random_tokenizer_expresses_the_task(random_tokenizer: Any) -> None:
    # The offline BPE of the tiny test models has "00".."99", "01" included.
    records = generate_greater_than(random_tokenizer, 10, seed=0)
    assert len(records) == 10
    assert all(r["counterfactuals"]["01"]["roles"] == r["roles"] for r in records)


def test_two_digit_tokenizer_without_01_message() -> None:
    # Two-digit years without "01": the corrupted run cannot keep its length.
    with pytest.raises(TaskTooSmallError) as caught:
        generate_greater_than(_word_level_tokenizer(with_01=False), 10, seed=0)
    message = str(caught.value)
    assert isinstance(caught.value, UserFacingError)
    assert "\n" not in message
    assert "'greater_than'" in message
    assert "not '01'" in message
    assert "(tasks.greater_than.enabled: false)" in message


def test_two_digit_tokenizer_without_01_raises() -> None:
    with pytest.raises(TaskTooSmallError, match="not '01'"):
        generate_greater_than(_word_level_tokenizer(with_01=False), 5, seed=0)


def test_tokenizer_without_numbers_raises() -> None:
    with pytest.raises(TaskTooSmallError, match="neither one two-digit token nor single digits"):
        generate_greater_than(_word_level_tokenizer(numbers=False), 5, seed=0)


def test_invalid_arguments(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="n_prompts"):
        generate_greater_than(smollm2_tokenizer, 0, seed=0)
    with pytest.raises(ValueError, match="min_prompts"):
        generate_greater_than(smollm2_tokenizer, 3, seed=0, min_prompts=-1)


# --- probability difference --------------------------------------------------------------

RECORD_1732 = {
    "candidates": ["0", "1", "2", "4", "5", "6", "7", "8", "9"],
    "correct": ["4", "5", "6", "7", "8", "9"],
}


def test_probability_difference_from_a_mapping() -> None:
    probs = dict.fromkeys(RECORD_1732["candidates"], 0.0)
    probs.update({"4": 0.3, "5": 0.2, "2": 0.1, "0": 0.05})
    assert probability_difference(probs, RECORD_1732) == pytest.approx(0.5 - 0.15)
    probs["3"] = 0.9  # the ambiguous equal tens digit is not a candidate: ignored
    assert probability_difference(probs, RECORD_1732) == pytest.approx(0.35)
    del probs["9"]
    with pytest.raises(KeyError):
        probability_difference(probs, RECORD_1732)


def test_probability_difference_extremes_and_arrays() -> None:
    n = len(RECORD_1732["candidates"])
    all_correct = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    all_wrong = [1.0] + [0.0] * (n - 1)
    assert probability_difference(all_correct, RECORD_1732) == pytest.approx(1.0)
    assert probability_difference(np.array(all_wrong), RECORD_1732) == pytest.approx(-1.0)
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    assert probability_difference(uniform, RECORD_1732) == pytest.approx(3 / n)
    batch = torch.tensor([all_correct, all_wrong], dtype=torch.float32)
    result = probability_difference(batch, RECORD_1732)
    assert isinstance(result, torch.Tensor)
    assert result.tolist() == pytest.approx([1.0, -1.0])
    with pytest.raises(ValueError, match="candidates"):
        probability_difference(torch.zeros(n + 1), RECORD_1732)


def test_probability_difference_on_generated_records(tokenizer: Any) -> None:
    for record in generate_greater_than(tokenizer, 10, seed=0):
        probs = dict.fromkeys(record["candidates"], 0.0)
        probs[record["answer"]] = 1.0
        assert probability_difference(probs, record) == 1.0
        probs[record["answer"]], probs[record["wrong_answer"]] = 0.0, 1.0
        assert probability_difference(probs, record) == -1.0
