"""Tests for the factual-recall generator (circuit_repro.tasks.facts) and its data file."""

from __future__ import annotations

import string
from collections import Counter
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks import facts
from circuit_repro.tasks.base import TaskTooSmallError, is_single_token
from circuit_repro.tasks.facts import filter_known, generate_facts

TOKENIZER_FIXTURES = ["smollm2_tokenizer", "gemma3_tokenizer", "random_tokenizer"]

# Small enough for every tokenizer (the random one only supports two relations, ~90 items).
N_PROMPTS = 60

ATTRIBUTE_OF = {
    (relation, subject): attribute
    for relation, data in facts.load_relations().items()
    for subject, attribute in data["facts"]
}


@pytest.fixture(params=TOKENIZER_FIXTURES)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """Each tokenizer fixture in turn."""
    return request.getfixturevalue(request.param)


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def _char_level_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: no attribute is a single token."""
    vocab = {char: index for index, char in enumerate(["[UNK]", *string.printable])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path="char-level-test", unk_token="[UNK]"
    )


# --- data file ---------------------------------------------------------------------------


def test_data_file_has_the_required_relations_and_sizes() -> None:
    relations = facts.load_relations()
    assert {"capital_of", "language_of", "currency_of"} <= set(relations)
    assert len(relations) >= 4
    assert len(relations["capital_of"]["facts"]) >= 30
    for name, relation in relations.items():
        subjects = [subject for subject, _ in relation["facts"]]
        assert len(subjects) >= 20, name
        assert len(set(subjects)) == len(subjects), name
        assert len({attribute for _, attribute in relation["facts"]}) >= facts.N_CANDIDATES
        for template in relation["templates"]:
            assert template.count("{subject}") == 1 and not template.endswith(" ")
        for subject, attribute in relation["facts"]:
            # The answer must never be copyable from the prompt.
            assert attribute not in subject.split(), (name, subject)


def test_known_facts_are_right() -> None:
    assert ATTRIBUTE_OF[("capital_of", "France")] == "Paris"
    assert ATTRIBUTE_OF[("language_of", "Brazil")] == "Portuguese"
    assert ATTRIBUTE_OF[("currency_of", "Japan")] == "yen"


# --- generator ---------------------------------------------------------------------------


def test_same_seed_gives_identical_records(tokenizer: Any) -> None:
    assert generate_facts(tokenizer, N_PROMPTS, seed=5) == generate_facts(
        tokenizer, N_PROMPTS, seed=5
    )


def test_different_seed_gives_different_records(tokenizer: Any) -> None:
    first = [r["prompt"] for r in generate_facts(tokenizer, N_PROMPTS, seed=1)]
    second = [r["prompt"] for r in generate_facts(tokenizer, N_PROMPTS, seed=2)]
    assert first != second


def test_record_fields(tokenizer: Any) -> None:
    records = generate_facts(tokenizer, N_PROMPTS, seed=0)
    assert [r["id"] for r in records] == list(range(N_PROMPTS))
    assert len({r["prompt"] for r in records}) == N_PROMPTS  # each fact prompt once
    for record in records:
        relation = facts.load_relations()[record["relation"]]
        template = relation["templates"][record["template"]]
        assert record["task"] == "facts"
        assert record["prompt"] == template.replace("{subject}", record["subject"])
        assert record["attribute"] == ATTRIBUTE_OF[(record["relation"], record["subject"])]
        assert record["answer"] == " " + record["attribute"]
        assert record["wrong_answer"] != record["answer"]
        candidates = record["candidates"]
        assert len(candidates) == len(set(candidates)) == facts.N_CANDIDATES
        assert {record["answer"], record["wrong_answer"]} <= set(candidates)
        assert record["correct"] == [record["answer"]]
        attributes = {" " + attribute for _, attribute in relation["facts"]}
        assert set(candidates) <= attributes
        for candidate in candidates:
            assert is_single_token(tokenizer, candidate)


def test_roles_point_at_the_subject(tokenizer: Any) -> None:
    for record in generate_facts(tokenizer, N_PROMPTS, seed=0):
        ids = _ids(tokenizer, record["prompt"])
        roles = record["roles"]
        assert set(roles) == {"SUBJECT_FIRST", "SUBJECT_LAST", "END"}
        subject_ids = ids[roles["SUBJECT_FIRST"] : roles["SUBJECT_LAST"] + 1]
        assert tokenizer.decode(subject_ids).strip() == record["subject"]
        assert roles["END"] == len(ids) - 1
        assert roles["SUBJECT_LAST"] < roles["END"]


def test_gemma_positions_skip_bos(gemma3_tokenizer: Any) -> None:
    for record in generate_facts(gemma3_tokenizer, 20, seed=0):
        assert _ids(gemma3_tokenizer, record["prompt"])[0] == gemma3_tokenizer.bos_token_id
        assert min(record["roles"].values()) >= 1


def test_other_subject_counterfactual(tokenizer: Any) -> None:
    for record in generate_facts(tokenizer, N_PROMPTS, seed=0):
        counterfactual = record["counterfactuals"]["other_subject"]
        roles = record["roles"]
        clean_ids = _ids(tokenizer, record["prompt"])
        ids = _ids(tokenizer, counterfactual["prompt"])
        assert len(ids) == len(clean_ids)
        assert counterfactual["roles"] == roles
        changed = {i for i, (a, b) in enumerate(zip(clean_ids, ids, strict=True)) if a != b}
        assert changed
        assert changed <= set(range(roles["SUBJECT_FIRST"], roles["SUBJECT_LAST"] + 1))
        other_attribute = ATTRIBUTE_OF[(record["relation"], counterfactual["subject"])]
        assert counterfactual["answer"] == " " + other_attribute == record["wrong_answer"]
        assert counterfactual["wrong_answer"] == record["answer"]
        assert counterfactual["prompt"] == record["prompt"].replace(
            record["subject"], counterfactual["subject"]
        )


@pytest.mark.parametrize("fixture_name", ["smollm2_tokenizer", "gemma3_tokenizer"])
def test_relations_are_balanced(request: pytest.FixtureRequest, fixture_name: str) -> None:
    tokenizer = request.getfixturevalue(fixture_name)
    n_relations = len(facts.RELATIONS)
    records = generate_facts(tokenizer, 20 * n_relations, seed=0)
    counts = Counter(record["relation"] for record in records)
    assert counts == dict.fromkeys(facts.RELATIONS, 20)


def test_relations_argument(smollm2_tokenizer: Any) -> None:
    records = generate_facts(smollm2_tokenizer, 30, seed=0, relations=["capital_of"])
    assert {record["relation"] for record in records} == {"capital_of"}
    with pytest.raises(ValueError, match="unknown relations"):
        generate_facts(smollm2_tokenizer, 5, seed=0, relations=["birthplace_of"])


def test_asking_for_more_than_exists_returns_every_fact_once(smollm2_tokenizer: Any) -> None:
    records = generate_facts(smollm2_tokenizer, 5000, seed=0, min_prompts=0)
    assert 100 < len(records) < 5000
    keys = [(r["relation"], r["template"], r["subject"]) for r in records]
    assert len(set(keys)) == len(keys)
    with pytest.raises(TaskTooSmallError, match=f"only {len(records)} of 5000"):
        generate_facts(smollm2_tokenizer, 5000, seed=0)


def test_random_tokenizer_keeps_only_expressible_relations(random_tokenizer: Any) -> None:
    # Its vocabulary holds the capitals but no language names or currencies.
    records = generate_facts(random_tokenizer, N_PROMPTS, seed=0)
    assert {record["relation"] for record in records} == {"capital_of", "landmark_city"}
    with pytest.raises(TaskTooSmallError, match="relations with at least 4 single-token"):
        generate_facts(random_tokenizer, 10, seed=0, relations=["language_of"])


def test_too_small_for_char_level_tokenizer() -> None:
    with pytest.raises(TaskTooSmallError) as caught:
        generate_facts(_char_level_tokenizer(), 40, seed=0)
    message = str(caught.value)
    assert isinstance(caught.value, UserFacingError)
    assert "\n" not in message
    assert "'facts'" in message and "char-level-test" in message
    assert "0 of 40" in message and "(tasks.facts.enabled: false)" in message
    assert generate_facts(_char_level_tokenizer(), 40, seed=0, min_prompts=0) == []


def test_invalid_arguments(smollm2_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="n_prompts"):
        generate_facts(smollm2_tokenizer, 0, seed=0)
    with pytest.raises(ValueError, match="min_prompts"):
        generate_facts(smollm2_tokenizer, 5, seed=0, min_prompts=6)


# --- filter_known ------------------------------------------------------------------------


def test_filter_known_with_sequences_and_mappings(smollm2_tokenizer: Any) -> None:
    records = generate_facts(smollm2_tokenizer, 6, seed=0)
    flags = [True, False, True, False, False, True]
    expected = [records[0], records[2], records[5]]
    assert filter_known(records, flags) == expected
    assert filter_known(records, np.array(flags)) == expected
    by_id = {record["id"]: flag for record, flag in zip(records, flags, strict=True)}
    assert filter_known(records, by_id) == expected
    assert [r["id"] for r in filter_known(records, flags)] == [0, 2, 5]  # ids kept


def test_filter_known_rejects_mismatched_scores(smollm2_tokenizer: Any) -> None:
    records = generate_facts(smollm2_tokenizer, 4, seed=0)
    with pytest.raises(ValueError, match="3 scores for 4 records"):
        filter_known(records, [True, True, True])
    with pytest.raises(ValueError, match="lack record ids"):
        filter_known(records, {0: True, 1: True})
