"""Tests for the IOI generator (circuit_repro.tasks.ioi) and shared task helpers (base)."""

from __future__ import annotations

import pickle
import re
import string
from collections import Counter
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks import ioi
from circuit_repro.tasks.base import (
    TaskTooSmallError,
    is_single_token,
    read_jsonl,
    token_positions,
    write_jsonl,
)
from circuit_repro.tasks.ioi import generate_ioi

TOKENIZER_FIXTURES = ["smollm2_tokenizer", "gemma3_tokenizer", "random_tokenizer"]

# Even and a multiple of 2 * len(TEMPLATES) so every (template, order) pair is used equally.
N_PROMPTS = 2 * len(ioi.TEMPLATES) * 2

NAME_ROLES = ("IO", "S1", "S2")

# A fixed sentence whose words are single tokens for both SmolLM2 and Gemma 3.
FIXED_PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(params=TOKENIZER_FIXTURES)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """Each real tokenizer fixture in turn."""
    return request.getfixturevalue(request.param)


def _records_for(tokenizer: Any, seed: int = 0) -> list[dict[str, Any]]:
    return generate_ioi(tokenizer, N_PROMPTS, seed=seed)


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids as the model sees them (default special tokens included)."""
    return list(tokenizer(prompt)["input_ids"])


def _char_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character, so no name is a single token."""
    vocab = {char: index for index, char in enumerate(["[UNK]", *string.printable])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="char-level-test", unk_token="[UNK]"
    )


def _word_level_tokenizer(names: tuple[str, ...]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer knowing every template word and ``names``.

    Its offsets exclude the space before a word (" Mary" -> offsets of "Mary"), unlike
    byte-level BPE, which exercises the other offset convention.
    """
    words: set[str] = set()
    splitter = pre_tokenizers.Whitespace()
    for text in (*ioi.TEMPLATES, *ioi.PLACES, *ioi.OBJECTS):
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text))
    words.update(names)
    vocab = {word: index for index, word in enumerate(["[UNK]", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="word-level-test", unk_token="[UNK]"
    )


def _decode_at(tokenizer: Any, ids: list[int], position: int) -> str:
    return tokenizer.decode([ids[position]]).strip()


# --- module constants --------------------------------------------------------------------


def test_word_lists_are_large_enough_and_unique() -> None:
    assert len(ioi.TEMPLATES) >= 15
    assert len(ioi.NAMES) >= 60
    assert len(ioi.PLACES) >= 15
    assert len(ioi.OBJECTS) >= 15
    for words in (ioi.NAMES, ioi.PLACES, ioi.OBJECTS, ioi.TEMPLATES):
        assert len(set(words)) == len(words)


def test_objects_take_the_article_a() -> None:
    # Templates say "a {OBJECT}", so an object starting with a vowel would read "a apple".
    assert not [obj for obj in ioi.OBJECTS if obj[0].lower() in "aeiou"]


def test_templates_put_a_space_before_every_name_and_end_before_the_answer() -> None:
    for template in ioi.TEMPLATES:
        assert not template.endswith(" ")
        for slot in ("FIRST", "SECOND", "REPEAT"):
            assert template.count("{" + slot + "}") == 1
            assert re.search(r" \{" + slot + r"\}", template), (template, slot)


# --- base helpers ------------------------------------------------------------------------


def test_is_single_token(smollm2_tokenizer: Any) -> None:
    assert is_single_token(smollm2_tokenizer, " Mary")
    assert not is_single_token(smollm2_tokenizer, " Mary Mary")
    assert not is_single_token(_char_level_tokenizer(), " Mary")
    # A word-level vocabulary encodes unknown words as one <unk> id: not a real token.
    word_level = _word_level_tokenizer(("Mary",))
    assert is_single_token(word_level, " Mary")
    assert not is_single_token(word_level, " Zebulon")


@pytest.mark.parametrize(
    ("fixture_name", "expected"),
    [
        # SmolLM2 adds no special tokens; Gemma 3 prepends <bos>, shifting everything by one.
        ("smollm2_tokenizer", {"IO": 1, "S1": 3, "S2": 9, "END": 13}),
        ("gemma3_tokenizer", {"IO": 2, "S1": 4, "S2": 10, "END": 14}),
    ],
)
def test_token_positions_account_for_special_tokens(
    request: pytest.FixtureRequest, fixture_name: str, expected: dict[str, int]
) -> None:
    tokenizer = request.getfixturevalue(fixture_name)
    first_john = FIXED_PROMPT.index(" John")
    second_john = FIXED_PROMPT.rindex(" John")
    spans = {
        # With and without the leading space: both must find the name's token.
        "IO": (FIXED_PROMPT.index(" Mary"), FIXED_PROMPT.index(" Mary") + 5),
        "S1": (first_john + 1, first_john + 5),
        "S2": (second_john, second_john + 5),
        "END": None,
    }
    assert token_positions(tokenizer, FIXED_PROMPT, spans) == expected


def test_token_positions_with_offsets_that_exclude_the_space() -> None:
    tokenizer = _word_level_tokenizer(("Mary", "John"))
    prompt = "When Mary and John went"
    start = prompt.index(" John")
    positions = token_positions(tokenizer, prompt, {"S": (start, start + 5), "END": None})
    assert positions == {"S": 3, "END": 4}


def test_token_positions_rejects_bad_spans(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="outside the prompt"):
        token_positions(smollm2_tokenizer, "When Mary", {"IO": (4, 40)})
    with pytest.raises(ValueError, match="only whitespace"):
        token_positions(smollm2_tokenizer, "When Mary", {"IO": (4, 5)})


def test_jsonl_round_trip(tmp_path: Any, smollm2_tokenizer: Any) -> None:
    records = generate_ioi(smollm2_tokenizer, 10, seed=3)
    path = tmp_path / "nested" / "ioi.jsonl"
    write_jsonl(records, path)
    assert read_jsonl(path) == records
    assert len(path.read_text(encoding="utf-8").splitlines()) == 10
    assert [p.name for p in path.parent.iterdir()] == ["ioi.jsonl"]  # no temporary left


def test_task_too_small_error_pickles() -> None:
    error = TaskTooSmallError("ioi", "tok", n_kept=1, n_requested=9, min_required=5)
    restored = pickle.loads(pickle.dumps(error))
    assert str(restored) == str(error)
    assert restored.n_kept == 1
    # Some items survived: fewer prompts would do.
    assert str(error).endswith("or lower tasks.ioi.n_prompts")


# --- IOI generator -----------------------------------------------------------------------


def test_same_seed_gives_identical_records(tokenizer: Any) -> None:
    assert _records_for(tokenizer, seed=7) == _records_for(tokenizer, seed=7)


def test_different_seed_gives_different_records(tokenizer: Any) -> None:
    first = [record["prompt"] for record in _records_for(tokenizer, seed=1)]
    second = [record["prompt"] for record in _records_for(tokenizer, seed=2)]
    assert first != second


def test_record_fields(tokenizer: Any) -> None:
    records = _records_for(tokenizer)
    assert [record["id"] for record in records] == list(range(N_PROMPTS))
    for record in records:
        names = record["names"]
        assert record["task"] == "ioi"
        assert record["answer"] == " " + names["IO"]
        assert record["wrong_answer"] == " " + names["S"]
        assert names["IO"] != names["S"]
        assert not record["prompt"].endswith(" ")
        assert record["prompt"].count(names["S"]) >= 2
        assert is_single_token(tokenizer, record["answer"])
        assert is_single_token(tokenizer, record["wrong_answer"])
        flipped = record["counterfactuals"]["flipped"]
        assert (flipped["answer"], flipped["wrong_answer"]) == (
            record["wrong_answer"],
            record["answer"],
        )
        abc_names = record["counterfactuals"]["abc"]["names"]
        assert len({*abc_names.values(), names["IO"], names["S"]}) == 5


def test_roles_point_at_the_right_tokens(tokenizer: Any) -> None:
    for record in _records_for(tokenizer):
        ids = _ids(tokenizer, record["prompt"])
        roles = record["roles"]
        names = record["names"]
        assert _decode_at(tokenizer, ids, roles["IO"]) == names["IO"]
        assert _decode_at(tokenizer, ids, roles["S1"]) == names["S"]
        assert _decode_at(tokenizer, ids, roles["S2"]) == names["S"]
        assert roles["END"] == len(ids) - 1
        assert roles["S1"] < roles["S2"] and roles["IO"] < roles["S2"]
        # ABBA puts IO before S1 in the opening clause, BABA after.
        assert (roles["IO"] < roles["S1"]) == (record["order"] == "ABBA")


def test_gemma_positions_skip_bos(gemma3_tokenizer: Any) -> None:
    for record in generate_ioi(gemma3_tokenizer, 10, seed=0):
        ids = _ids(gemma3_tokenizer, record["prompt"])
        assert ids[0] == gemma3_tokenizer.bos_token_id
        assert min(record["roles"].values()) >= 1


def test_counterfactual_roles_point_at_the_replaced_names(tokenizer: Any) -> None:
    for record in _records_for(tokenizer):
        flipped = record["counterfactuals"]["flipped"]
        flipped_ids = _ids(tokenizer, flipped["prompt"])
        assert _decode_at(tokenizer, flipped_ids, flipped["roles"]["S2"]) == record["names"]["IO"]
        abc = record["counterfactuals"]["abc"]
        abc_ids = _ids(tokenizer, abc["prompt"])
        for role, letter in (("IO", "A"), ("S1", "B"), ("S2", "C")):
            assert _decode_at(tokenizer, abc_ids, abc["roles"][role]) == abc["names"][letter]


def test_counterfactuals_differ_only_at_name_positions(tokenizer: Any) -> None:
    for record in _records_for(tokenizer):
        clean_ids = _ids(tokenizer, record["prompt"])
        roles = record["roles"]
        for name, expected_changes in (
            ("flipped", {roles["S2"]}),
            ("abc", {roles["IO"], roles["S1"], roles["S2"]}),
        ):
            counterfactual = record["counterfactuals"][name]
            ids = _ids(tokenizer, counterfactual["prompt"])
            assert len(ids) == len(clean_ids), name
            assert counterfactual["roles"] == roles, name
            changed = {i for i, (a, b) in enumerate(zip(clean_ids, ids, strict=True)) if a != b}
            assert changed == expected_changes, (name, record["prompt"], counterfactual["prompt"])


def test_templates_and_orders_are_balanced(tokenizer: Any) -> None:
    records = _records_for(tokenizer)
    orders = [record["order"] for record in records]
    assert orders == ["ABBA", "BABA"] * (N_PROMPTS // 2)
    pairs = Counter((record["template"], record["order"]) for record in records)
    assert set(pairs) == {(t, o) for t in range(len(ioi.TEMPLATES)) for o in ioi.ORDERS}
    assert set(pairs.values()) == {N_PROMPTS // (2 * len(ioi.TEMPLATES))}


def test_word_level_tokenizer_with_space_free_offsets() -> None:
    tokenizer = _word_level_tokenizer(ioi.NAMES[:8])
    records = generate_ioi(tokenizer, 20, seed=0)
    assert len(records) == 20
    for record in records:
        ids = _ids(tokenizer, record["prompt"])
        assert _decode_at(tokenizer, ids, record["roles"]["IO"]) == record["names"]["IO"]
        assert _decode_at(tokenizer, ids, record["roles"]["S2"]) == record["names"]["S"]


def test_too_small_for_char_level_tokenizer() -> None:
    with pytest.raises(TaskTooSmallError) as caught:
        generate_ioi(_char_level_tokenizer(), 50, seed=0)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, UserFacingError)
    assert "\n" not in message
    assert "'ioi'" in message
    assert "char-level-test" in message
    assert "0 of 50" in message
    assert "(tasks.ioi.enabled: false)" in message


def test_too_few_single_token_names_raises() -> None:
    # Four names cannot fill IO, S and three fresh ABC names.
    tokenizer = _word_level_tokenizer(ioi.NAMES[:4])
    with pytest.raises(TaskTooSmallError, match="4 of"):
        generate_ioi(tokenizer, 10, seed=0)
    assert generate_ioi(tokenizer, 10, seed=0, min_prompts=0) == []


def test_invalid_arguments(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="n_prompts"):
        generate_ioi(smollm2_tokenizer, 0, seed=0)
    with pytest.raises(ValueError, match="min_prompts"):
        generate_ioi(smollm2_tokenizer, 5, seed=0, min_prompts=6)
