"""The task registry: every configured task has a generator, and parameters reach it."""

from __future__ import annotations

import pytest

from circuit_repro.pipeline.config import check_config, enabled_tasks, load_registry, load_schema
from circuit_repro.tasks import GENERATORS, generate_task


def test_config_schema_and_generators_name_the_same_tasks():
    schema_tasks = set(load_schema("config")["properties"]["tasks"]["properties"])
    assert schema_tasks == set(GENERATORS)


def test_enabled_tasks_follow_the_config():
    config = check_config({"tasks": {"mcqa": {"enabled": False}}}, load_registry())
    assert enabled_tasks(config) == sorted(set(GENERATORS) - {"mcqa"})


@pytest.mark.parametrize("task", GENERATORS)
def test_every_task_generates_for_smollm2(task, smollm2_tokenizer):
    params = {"enabled": True, "n_prompts": 8}
    if task.startswith("icl_"):
        params["k_shot"] = 2
    records = generate_task(task, smollm2_tokenizer, params, seed=3)
    assert len(records) == 8
    again = generate_task(task, smollm2_tokenizer, params, seed=3)
    assert records == again
    for record in records:
        for field in ("prompt", "answer", "wrong_answer", "roles", "counterfactuals"):
            assert field in record, (task, field)
        assert record["roles"]["END"] == len(smollm2_tokenizer(record["prompt"]).input_ids) - 1
    if task.startswith("icl_"):
        assert records[0]["prompt"].count("\n") >= 2 * 2  # two demonstrations, two lines each


def test_unknown_task_is_a_clear_error(smollm2_tokenizer):
    with pytest.raises(ValueError, match="unknown task 'ioii'; known tasks: ioi"):
        generate_task("ioii", smollm2_tokenizer, {"n_prompts": 4}, seed=0)
