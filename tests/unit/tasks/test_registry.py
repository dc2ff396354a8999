"""The task registry, and the record contract every task generator keeps.

:func:`test_every_task_keeps_the_record_contract` runs each task of ``TASK_NAMES`` on the
tiny offline tokenizer and on SmolLM2's: what analyses rely on (END scores the answer,
answers are single tokens, counterfactuals align with the clean prompt, files round-trip)
holds for every task, not only for the tasks whose own tests check it.
"""

from __future__ import annotations

from typing import Any

import pytest

from circuit_repro.pipeline.config import check_config, enabled_tasks, load_registry, load_schema
from circuit_repro.tasks import TASK_NAMES, generate_task, generator
from circuit_repro.tasks.base import TaskTooSmallError, is_single_token, read_records, write_jsonl
from circuit_repro.tasks.records import TaskRecord

N_PROMPTS = 8

TOKENIZERS = ("random_tokenizer", "smollm2_tokenizer")

#: Tasks the tiny offline tokenizer cannot express, and why; they are skipped there only
#: after checking that the generator says so (TaskTooSmallError).
TINY_TOKENIZER_CANNOT = {
    "icl_topic": (
        "icl_topic: the tiny offline tokenizer has no single tokens for the topic labels "
        "' sports', ' food', ' animals', ' weather'"
    ),
}


def test_config_schema_and_registry_name_the_same_tasks():
    schema_tasks = set(load_schema("config")["properties"]["tasks"]["properties"])
    assert schema_tasks == set(TASK_NAMES)


def test_generators_is_a_deprecated_alias_of_task_names():
    assert all(isinstance(name, str) for name in TASK_NAMES)


def test_enabled_tasks_follow_the_config():
    config = check_config({"tasks": {"mcqa": {"enabled": False}}}, load_registry())
    assert enabled_tasks(config) == sorted(set(TASK_NAMES) - {"mcqa"})


def test_unknown_task_is_a_clear_error(random_tokenizer):
    with pytest.raises(ValueError, match="unknown task 'ioii'; known tasks: ioi"):
        generate_task("ioii", random_tokenizer, {"n_prompts": 4}, seed=0)


def _params(task: str) -> dict[str, Any]:
    """The task's config section: ``enabled`` must be ignored, the rest passed on."""
    params: dict[str, Any] = {"enabled": True, "n_prompts": N_PROMPTS}
    if task.startswith("icl_"):
        params["k_shot"] = 2  # short prompts; also shows that parameters reach the generator
    return params


def _n_tokens(tokenizer: Any, prompt: str) -> int:
    """Length of the prompt as the model sees it (default special tokens included)."""
    return len(tokenizer(prompt).input_ids)


@pytest.mark.parametrize("tokenizer_fixture", TOKENIZERS)
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_keeps_the_record_contract(task, tokenizer_fixture, request, tmp_path):
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    params = _params(task)
    if tokenizer_fixture == "random_tokenizer" and task in TINY_TOKENIZER_CANNOT:
        with pytest.raises(TaskTooSmallError):
            generate_task(task, tokenizer, params, seed=3)
        pytest.skip(TINY_TOKENIZER_CANNOT[task])

    records = generate_task(task, tokenizer, params, seed=3)

    assert len(records) == N_PROMPTS
    assert all(isinstance(record, TaskRecord) for record in records)
    assert len({record.id for record in records}) == len(records), "ids are not unique"
    if task.startswith("icl_"):
        assert all(record.fields["k_shot"] == 2 for record in records)

    # Seeded: the same seed gives the same records, another seed other prompts.
    assert generate_task(task, tokenizer, params, seed=3) == records
    other = generate_task(task, tokenizer, params, seed=4)
    assert [r.prompt for r in other] != [r.prompt for r in records]

    for record in records:
        _check_record(task, tokenizer, record)

    # The generator's dicts survive the typed view unchanged, and files round-trip.
    arguments = {k: v for k, v in params.items() if k != "enabled"}
    dicts = generator(task)(tokenizer, seed=3, **arguments)
    assert [record.to_dict() for record in records] == dicts
    path = tmp_path / f"{task}.jsonl"
    write_jsonl(records, path)
    assert read_records(path) == records


def _check_record(task: str, tokenizer: Any, record: TaskRecord) -> None:
    """The per-record part of the contract."""
    where = f"{task} record {record.id}"
    n_tokens = _n_tokens(tokenizer, record.prompt)
    # END is the last token: neither tokenizer appends special tokens.
    assert record.end == n_tokens - 1, where
    for role, position in record.roles.items():
        assert 0 <= position < n_tokens, (where, role, position)

    for text in (record.answer, record.wrong_answer, *record.candidates):
        assert is_single_token(tokenizer, text), (where, text)
    assert record.answer in record.candidates, where
    assert set(record.correct) <= set(record.candidates), where
    assert record.wrong_answer in set(record.candidates) - set(record.correct), where

    for name, counterfactual in record.counterfactuals.items():
        cf_where = (where, name)
        cf_tokens = _n_tokens(tokenizer, counterfactual.prompt)
        for role, position in counterfactual.roles.items():
            assert 0 <= position < cf_tokens, (cf_where, role, position)
        for text in (counterfactual.answer, counterfactual.wrong_answer):
            if text is not None:
                assert is_single_token(tokenizer, text), (cf_where, text)
        if counterfactual.fields.get("same_length") is False:
            # The MCQA format's "numbers" labels (mcqa, mc_categories) on per-digit
            # tokenizers (SmolLM2): "Answer: 1" ends the prompt with a space token of its own, one token more than the clean
            # prompt, as the record states in same_length. Every label and option still
            # sits where the clean prompt has it; only END moves by that one token.
            assert (task, name) in {("mcqa", "numbers"), ("mc_categories", "numbers")}, cf_where
            assert cf_tokens == n_tokens + 1, cf_where
            assert counterfactual.end == record.end + 1, cf_where
            assert {r: p for r, p in counterfactual.roles.items() if r != "END"} == {
                r: p for r, p in record.roles.items() if r != "END"
            }, cf_where
            continue
        # Patching swaps activations position by position: the runs must align.
        assert cf_tokens == n_tokens, cf_where
        assert counterfactual.end == record.end, cf_where
