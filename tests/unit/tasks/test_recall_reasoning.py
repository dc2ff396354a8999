"""Tests for the paired recall/reasoning generator (circuit_repro.tasks.recall_reasoning)."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks import recall_reasoning
from circuit_repro.tasks.base import TaskTooSmallError, is_single_token
from circuit_repro.tasks.facts import load_relations
from circuit_repro.tasks.recall_reasoning import generate_recall_reasoning

TOKENIZER_FIXTURES = ["smollm2_tokenizer", "gemma3_tokenizer", "random_tokenizer"]

N_PROMPTS = 40

CAPITAL_OF = dict(load_relations()["capital_of"]["facts"])


@pytest.fixture(params=TOKENIZER_FIXTURES)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """Each tokenizer fixture in turn."""
    return request.getfixturevalue(request.param)


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def _word_at(tokenizer: Any, prompt: str, position: int) -> str:
    return tokenizer.decode([_ids(tokenizer, prompt)[position]]).strip()


def _changed(tokenizer: Any, first: str, second: str) -> set[int]:
    a, b = _ids(tokenizer, first), _ids(tokenizer, second)
    assert len(a) == len(b), (first, second)
    return {i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y}


def _char_level_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: no name or city is a single token."""
    vocab = {char: index for index, char in enumerate(["[UNK]", *string.printable])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="char-level-test", unk_token="[UNK]"
    )


def test_same_seed_gives_identical_records(tokenizer: Any) -> None:
    assert generate_recall_reasoning(tokenizer, N_PROMPTS, seed=3) == generate_recall_reasoning(
        tokenizer, N_PROMPTS, seed=3
    )


def test_different_seed_gives_different_records(tokenizer: Any) -> None:
    first = [r["prompt"] for r in generate_recall_reasoning(tokenizer, N_PROMPTS, seed=1)]
    second = [r["prompt"] for r in generate_recall_reasoning(tokenizer, N_PROMPTS, seed=2)]
    assert first != second


def test_families_are_paired_and_balanced(tokenizer: Any) -> None:
    records = generate_recall_reasoning(tokenizer, N_PROMPTS, seed=0)
    assert [r["id"] for r in records] == list(range(N_PROMPTS))
    assert [r["family"] for r in records] == ["recall", "reasoning"] * (N_PROMPTS // 2)
    assert [r["pair_id"] for r in records] == [i // 2 for i in range(N_PROMPTS)]
    assert Counter(r["referent"] for r in records[::2]) == {0: N_PROMPTS // 4, 1: N_PROMPTS // 4}
    odd = generate_recall_reasoning(tokenizer, 7, seed=0)
    assert [r["family"] for r in odd] == ["recall", "reasoning"] * 3 + ["recall"]


def test_answers_need_memory_or_context(tokenizer: Any) -> None:
    for record in generate_recall_reasoning(tokenizer, N_PROMPTS, seed=0):
        prompt, answer = record["prompt"], record["answer"]
        assert record["task"] == "recall_reasoning"
        assert not prompt.endswith(" ")
        assert is_single_token(tokenizer, answer)
        assert is_single_token(tokenizer, record["wrong_answer"])
        if record["family"] == "recall":
            # The capital of the asked-about country, and nowhere in the prompt.
            assert " capital city of " + record["entity"] + "," in prompt
            assert answer == " " + CAPITAL_OF[record["entity"]]
            assert answer.strip() not in prompt
        else:
            # The referent's city, stated in the context.
            assert " home city of " + record["entity"] + "," in prompt
            assert re.search(rf"\b{record['entity']} lives in{answer}[ .]", prompt), prompt
        assert record["correct"] == [answer]
        cities = set(record["context_cities"])
        assert len(cities) == 2 and all(city in prompt for city in cities)
        # The two context cities and the pair's recall answer (in reasoning records an
        # unmentioned distractor), so both families have three options.
        assert len(set(record["candidates"])) == 3
        assert {answer, *(" " + city for city in cities)} <= set(record["candidates"])
        unmentioned = [c for c in record["candidates"] if c.strip() not in prompt]
        assert len(unmentioned) == 1
        assert record["wrong_answer"] in record["candidates"]
        assert record["wrong_answer"] != answer


def test_roles_point_at_the_right_tokens(tokenizer: Any) -> None:
    for record in generate_recall_reasoning(tokenizer, N_PROMPTS, seed=0):
        prompt, roles = record["prompt"], record["roles"]
        context_city = record["context_cities"][record["referent"]]
        other_city = record["context_cities"][1 - record["referent"]]
        person = record["names"]["AC"[record["referent"]]]
        assert _word_at(tokenizer, prompt, roles["SUBJECT"]) == record["names"]["B"]
        assert _word_at(tokenizer, prompt, roles["ENTITY"]) == record["entity"]
        assert _word_at(tokenizer, prompt, roles["CONTEXT_CITY"]) == context_city
        assert _word_at(tokenizer, prompt, roles["OTHER_CITY"]) == other_city
        assert _word_at(tokenizer, prompt, roles["CONTEXT_PERSON"]) == person
        kind = recall_reasoning.KIND_WORDS[record["family"]]
        assert _word_at(tokenizer, prompt, roles["KIND"]) == kind
        assert roles["END"] == len(_ids(tokenizer, prompt)) - 1
        assert roles["CONTEXT_PERSON"] < roles["CONTEXT_CITY"] < roles["SUBJECT"]
        assert roles["SUBJECT"] < roles["KIND"] < roles["ENTITY"] < roles["END"]
        if record["family"] == "recall":
            assert record["wrong_answer"] == " " + context_city
        else:
            assert record["answer"] == " " + context_city
            assert record["wrong_answer"] == " " + other_city


def test_pairs_share_the_skeleton(tokenizer: Any) -> None:
    records = generate_recall_reasoning(tokenizer, N_PROMPTS, seed=0)
    for recall, reasoning in zip(records[::2], records[1::2], strict=True):
        assert recall["pair_id"] == reasoning["pair_id"]
        assert recall["roles"] == reasoning["roles"]
        assert recall["candidates"] == reasoning["candidates"]
        roles = recall["roles"]
        changed = _changed(tokenizer, recall["prompt"], reasoning["prompt"])
        assert changed == {roles["KIND"], roles["ENTITY"]}


def test_swap_counterfactual(tokenizer: Any) -> None:
    for record in generate_recall_reasoning(tokenizer, N_PROMPTS, seed=0):
        swap = record["counterfactuals"]["swap"]
        roles = record["roles"]
        assert swap["roles"] == roles
        changed = _changed(tokenizer, record["prompt"], swap["prompt"])
        assert swap["answer"] != record["answer"]
        assert swap["wrong_answer"] == record["wrong_answer"]
        if record["family"] == "recall":
            assert changed == {roles["ENTITY"]}
            assert swap["answer"] == " " + CAPITAL_OF[swap["entity"]]
            assert swap["answer"].strip() not in swap["prompt"]
        else:
            assert changed == {roles["CONTEXT_CITY"]}
            assert (
                _word_at(tokenizer, swap["prompt"], roles["CONTEXT_CITY"]) == swap["context_city"]
            )
            assert swap["answer"] == " " + swap["context_city"]


def test_too_small_for_char_level_tokenizer() -> None:
    with pytest.raises(TaskTooSmallError) as caught:
        generate_recall_reasoning(_char_level_tokenizer(), 10, seed=0)
    message = str(caught.value)
    assert isinstance(caught.value, UserFacingError)
    assert "\n" not in message
    assert "'recall_reasoning'" in message and "char-level-test" in message
    assert "0 of 10" in message and "(tasks.recall_reasoning.enabled: false)" in message
    assert "0 names (need 3)" in message
    assert generate_recall_reasoning(_char_level_tokenizer(), 10, seed=0, min_prompts=0) == []


def test_invalid_arguments(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="n_prompts"):
        generate_recall_reasoning(smollm2_tokenizer, 0, seed=0)
    with pytest.raises(ValueError, match="min_prompts"):
        generate_recall_reasoning(smollm2_tokenizer, 4, seed=0, min_prompts=5)
