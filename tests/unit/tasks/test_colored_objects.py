"""Tests for the colored-objects generator (circuit_repro.tasks.colored_objects)."""

from __future__ import annotations

import string
from collections import Counter
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks import colored_objects as co
from circuit_repro.tasks.base import TaskTooSmallError, is_single_token
from circuit_repro.tasks.colored_objects import generate_colored_objects

REAL_TOKENIZERS = ["smollm2_tokenizer", "gemma3_tokenizer"]

# A multiple of 3 so every list position is queried equally often.
N_PROMPTS = 60


@pytest.fixture(params=REAL_TOKENIZERS)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """SmolLM2's and Gemma 3's tokenizers in turn (both hold every colour and object)."""
    return request.getfixturevalue(request.param)


def _records(tokenizer: Any, seed: int = 0, n: int = N_PROMPTS) -> list[dict[str, Any]]:
    return generate_colored_objects(tokenizer, n, seed=seed)


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def _decode_at(tokenizer: Any, ids: list[int], position: int) -> str:
    return tokenizer.decode([ids[position]]).strip()


def _word_level_tokenizer(words: set[str], name: str = "word-level-test") -> Any:
    """Whitespace word-level tokenizer over ``words`` (offsets exclude the space)."""
    vocab = {word: index for index, word in enumerate(["[UNK]", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path=name, unk_token="[UNK]")


def _all_task_words() -> set[str]:
    """Every word and punctuation mark a colored-objects prompt can contain."""
    text = " ".join(
        [
            "Q : On the , and a an . What color is ? A",
            *co.SURFACES,
            *co.PHRASES,
            *co.OBJECTS,
            *co.COLOURS,
            *(colour.title() for colour in co.COLOURS),
        ]
    )
    return {piece for piece, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)}


# --- word lists --------------------------------------------------------------------------


def test_word_lists() -> None:
    assert len(co.OBJECTS) == 17
    assert len(co.COLOURS) == 8
    for words in (co.OBJECTS, co.COLOURS, co.SURFACES, co.PHRASES):
        assert len(set(words)) == len(words)
    assert all(word == word.lower() and word.isalpha() for word in (*co.OBJECTS, *co.COLOURS))


def test_every_word_is_a_single_token(tokenizer: Any) -> None:
    # The generator filters the lists, but for the two main models nothing should be lost.
    for word in co.OBJECTS + co.COLOURS:
        assert is_single_token(tokenizer, " " + word), word
    for colour in co.COLOURS:
        assert is_single_token(tokenizer, " " + colour.title()), colour


def test_render_question_format() -> None:
    text, spans = co.render_question(
        "desk", "you see", ["red", "orange", "blue"], ["pen", "cup", "book"], 2, answer=True
    )
    assert text == (
        "Q: On the desk, you see a red pen, an orange cup, and a blue book. "
        "What color is the book?\nA: Blue"
    )
    assert text[slice(*spans["COLOR_1"])] == "orange"
    assert text[slice(*spans["OBJECT_2"])] == "book"
    assert text[slice(*spans["QUERY_OBJECT"])] == "book"
    assert spans["QUERY_OBJECT"][0] > spans["OBJECT_2"][0]


# --- generator ---------------------------------------------------------------------------


def test_same_seed_gives_identical_records(tokenizer: Any) -> None:
    assert _records(tokenizer, seed=5) == _records(tokenizer, seed=5)


def test_different_seed_gives_different_records(tokenizer: Any) -> None:
    first = [record["prompt"] for record in _records(tokenizer, seed=1)]
    second = [record["prompt"] for record in _records(tokenizer, seed=2)]
    assert first != second


def test_record_fields(tokenizer: Any) -> None:
    records = _records(tokenizer)
    assert [record["id"] for record in records] == list(range(N_PROMPTS))
    for record in records:
        colours, objects = record["colors"], record["objects"]
        query, distractor = record["query_index"], record["distractor_index"]
        assert record["task"] == "colored_objects"
        assert len(set(colours)) == len(set(objects)) == 3
        assert query != distractor
        assert record["answer"] == " " + colours[query].title()
        assert record["wrong_answer"] == " " + colours[distractor].title()
        assert record["candidates"] == [" " + colour.title() for colour in colours]
        assert record["correct"] == [record["answer"]]
        assert set(record["correct"]) < set(record["candidates"])
        assert record["wrong_answer"] in record["candidates"]
        assert record["wrong_answer"] not in record["correct"]
        for answer in record["candidates"]:
            assert is_single_token(tokenizer, answer)
        prompt = record["prompt"]
        assert prompt.endswith(f"What color is the {objects[query]}?\nA:")
        # One solved example, then the query.
        assert prompt.count("Q: On the ") == 2
        assert prompt.count("\nA:") == 2
        example = record["example"]
        assert prompt.startswith(example["text"] + co.SEPARATOR)
        example_answer = example["colors"][example["query_index"]]
        assert example["text"].endswith("\nA: " + example_answer.title())
        assert example_answer != colours[query]
        assert not set(example["objects"]) & set(objects)
        query_text = prompt[len(example["text"]) :]
        for colour, obj in zip(colours, objects, strict=True):
            article = "an" if colour == "orange" else "a"
            assert f" {article} {colour} {obj}" in query_text


def test_roles_point_at_the_right_tokens(tokenizer: Any) -> None:
    for record in _records(tokenizer):
        ids = _ids(tokenizer, record["prompt"])
        roles = record["roles"]
        example_end = len(_ids(tokenizer, record["example"]["text"]))
        assert set(roles) == {
            *(f"{kind}_{i}" for kind in ("COLOR", "OBJECT") for i in range(3)),
            "QUERY_OBJECT",
            "ANSWER_COLOR",
            "END",
        }
        for index in range(3):
            assert _decode_at(tokenizer, ids, roles[f"COLOR_{index}"]) == record["colors"][index]
            assert _decode_at(tokenizer, ids, roles[f"OBJECT_{index}"]) == record["objects"][index]
            # Roles are in the query, after the solved example.
            assert roles[f"COLOR_{index}"] >= example_end
        order = [roles[f"{kind}_{i}"] for i in range(3) for kind in ("COLOR", "OBJECT")]
        assert order == sorted(order)
        query = record["query_index"]
        assert _decode_at(tokenizer, ids, roles["QUERY_OBJECT"]) == record["objects"][query]
        assert roles["QUERY_OBJECT"] > roles["OBJECT_2"]
        assert roles["ANSWER_COLOR"] == roles[f"COLOR_{query}"]
        assert roles["END"] == len(ids) - 1
        assert _decode_at(tokenizer, ids, roles["END"]) == ":"


def test_answer_is_the_next_token(tokenizer: Any) -> None:
    for record in _records(tokenizer, n=15):
        prompt_ids = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        full = tokenizer(record["prompt"] + record["answer"], add_special_tokens=False)
        assert full["input_ids"][:-1] == prompt_ids


def test_gemma_positions_skip_bos(gemma3_tokenizer: Any) -> None:
    for record in _records(gemma3_tokenizer, n=6):
        assert _ids(gemma3_tokenizer, record["prompt"])[0] == gemma3_tokenizer.bos_token_id
        assert min(record["roles"].values()) >= 1


def test_different_object_counterfactual(tokenizer: Any) -> None:
    for record in _records(tokenizer):
        counterfactual = record["counterfactuals"]["different_object"]
        clean_ids = _ids(tokenizer, record["prompt"])
        ids = _ids(tokenizer, counterfactual["prompt"])
        assert len(ids) == len(clean_ids)
        changed = {i for i, (a, b) in enumerate(zip(clean_ids, ids, strict=True)) if a != b}
        assert changed == {record["roles"]["QUERY_OBJECT"]}
        distractor = record["distractor_index"]
        assert counterfactual["query_index"] == distractor
        assert (
            _decode_at(tokenizer, ids, counterfactual["roles"]["QUERY_OBJECT"])
            == record["objects"][distractor]
        )
        assert counterfactual["answer"] == record["wrong_answer"]
        assert counterfactual["wrong_answer"] == record["answer"]
        assert counterfactual["candidates"] == record["candidates"]
        assert counterfactual["correct"] == [counterfactual["answer"]]
        expected_roles = {**record["roles"], "ANSWER_COLOR": record["roles"][f"COLOR_{distractor}"]}
        assert counterfactual["roles"] == expected_roles


def test_queried_position_and_answer_colour_vary(tokenizer: Any) -> None:
    records = _records(tokenizer)
    assert [record["query_index"] for record in records] == [0, 1, 2] * (N_PROMPTS // 3)
    distractor_offsets = Counter(
        (record["distractor_index"] - record["query_index"]) % 3 for record in records
    )
    assert set(distractor_offsets) == {1, 2}
    assert len({record["answer"] for record in records}) == len(co.COLOURS)
    assert len({record["surface"] for record in records}) == len(co.SURFACES)
    assert len({record["phrase"] for record in records}) == len(co.PHRASES)


def test_word_level_tokenizer_with_space_free_offsets() -> None:
    tokenizer = _word_level_tokenizer(_all_task_words())
    records = generate_colored_objects(tokenizer, 12, seed=0)
    assert len(records) == 12
    for record in records:
        ids = _ids(tokenizer, record["prompt"])
        for index in range(3):
            assert (
                _decode_at(tokenizer, ids, record["roles"][f"OBJECT_{index}"])
                == (record["objects"][index])
            )


# --- tokenizers that cannot express the task ---------------------------------------------


def test_random_tokenizer_expresses_the_task(random_tokenizer: Any) -> None:
    # The offline tokenizer of the tiny test models has every colour in both forms.
    assert is_single_token(random_tokenizer, " red")
    assert is_single_token(random_tokenizer, " Red")
    records = generate_colored_objects(random_tokenizer, 10, seed=0)
    assert len(records) == 10


def test_no_title_case_colours_raises() -> None:
    # " red" but not " Red" as one token: no answer is a single token, and the generator
    # must say so instead of producing bad records.
    words = _all_task_words() - {colour.title() for colour in co.COLOURS}
    tokenizer = _word_level_tokenizer(words)
    with pytest.raises(TaskTooSmallError) as caught:
        generate_colored_objects(tokenizer, 10, seed=0)
    message = str(caught.value)
    assert isinstance(caught.value, UserFacingError)
    assert "\n" not in message
    assert "'colored_objects'" in message
    assert "0 of 8 colours" in message
    assert "(tasks.colored_objects.enabled: false)" in message
    assert generate_colored_objects(tokenizer, 10, seed=0, min_prompts=0) == []


def test_too_few_objects_raises() -> None:
    words = _all_task_words() - set(co.OBJECTS[5:])  # five objects left, six needed
    with pytest.raises(TaskTooSmallError, match="5 of 17 objects"):
        generate_colored_objects(_word_level_tokenizer(words), 10, seed=0)


def test_char_level_tokenizer_raises() -> None:
    vocab = {char: index for index, char in enumerate(["[UNK]", *string.printable])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="char-level-test", unk_token="[UNK]"
    )
    with pytest.raises(TaskTooSmallError, match="char-level-test"):
        generate_colored_objects(tokenizer, 10, seed=0)


def test_invalid_arguments(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="n_prompts"):
        generate_colored_objects(smollm2_tokenizer, 0, seed=0)
    with pytest.raises(ValueError, match="min_prompts"):
        generate_colored_objects(smollm2_tokenizer, 3, seed=0, min_prompts=4)
