"""Typed task records (circuit_repro.tasks.records) and their JSONL files (base)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks.base import read_jsonl, read_records, write_jsonl
from circuit_repro.tasks.records import (
    END_ROLE,
    Counterfactual,
    CounterfactualNotFoundError,
    RecordError,
    RoleNotFoundError,
    Roles,
    TaskRecord,
)


def ioi_like() -> dict:
    """A record shaped like IOI's: no candidates or correct, two counterfactuals."""
    return {
        "task": "ioi",
        "id": 3,
        "template": 0,
        "order": "ABBA",
        "prompt": "When Mary and John went to the store, John gave a drink to",
        "answer": " Mary",
        "wrong_answer": " John",
        "names": {"IO": "Mary", "S": "John", "place": "store", "object": "drink"},
        "roles": {"IO": 1, "S1": 3, "S2": 10, "END": 14},
        "counterfactuals": {
            "flipped": {
                "prompt": "When Mary and John went to the store, Mary gave a drink to",
                "answer": " John",
                "wrong_answer": " Mary",
                "roles": {"IO": 1, "S1": 3, "S2": 10, "END": 14},
            },
            "abc": {
                "prompt": "When Anna and Paul went to the store, Lucy gave a drink to",
                "roles": {"IO": 1, "S1": 3, "S2": 10, "END": 14},
                "names": {"A": "Anna", "B": "Paul", "C": "Lucy"},
            },
        },
    }


def choice_like() -> dict:
    """A record with its own candidates and several correct ones (like greater-than)."""
    return {
        "task": "greater_than",
        "id": 0,
        "prompt": "The war lasted from the year 1732 to the year 17",
        "answer": "4",
        "wrong_answer": "2",
        "candidates": ["0", "1", "2", "4", "5"],
        "correct": ["4", "5"],
        "year": 32,
        "roles": {"CENTURY": 7, "YY": 9, "END": 17},
        "counterfactuals": {"01": {"prompt": "... 1701 ...", "year": 1, "roles": {"END": 17}}},
    }


# Round trip and the typed view.


@pytest.mark.parametrize("make", [ioi_like, choice_like])
def test_from_dict_to_dict_gives_back_the_same_dict_in_the_same_order(make):
    data = make()
    again = TaskRecord.from_dict(data).to_dict()
    assert again == data
    assert list(again) == list(data)
    for name, counterfactual in data["counterfactuals"].items():
        assert list(again["counterfactuals"][name]) == list(counterfactual)


def test_core_fields_are_attributes_and_the_rest_are_fields():
    record = TaskRecord.from_dict(ioi_like())
    assert (record.task, record.id, record.answer, record.wrong_answer) == (
        "ioi",
        3,
        " Mary",
        " John",
    )
    assert record.end == 14 and record.roles.end == 14
    assert record.roles.position("S2") == record.roles["S2"] == 10
    assert dict(record.fields) == {
        "template": 0,
        "order": "ABBA",
        "names": {"IO": "Mary", "S": "John", "place": "store", "object": "drink"},
    }
    flipped = record.counterfactual("flipped")
    assert flipped.answer == " John" and flipped.end == 14
    abc = record.counterfactual("abc")
    assert abc.answer is None and abc.wrong_answer is None
    assert abc.fields["names"] == {"A": "Anna", "B": "Paul", "C": "Lucy"}


def test_candidates_and_correct_default_to_the_answer_pair():
    record = TaskRecord.from_dict(ioi_like())
    assert record.candidates == (" Mary", " John")
    assert record.correct == (" Mary",)
    assert record.chance == 0.5
    assert "candidates" not in record.to_dict()  # IOI files stay as IOI writes them


def test_chance_counts_every_correct_candidate():
    record = TaskRecord.from_dict(choice_like())
    assert record.candidates == ("0", "1", "2", "4", "5")
    assert record.correct == ("4", "5")
    assert record.chance == pytest.approx(2 / 5)


def test_records_are_immutable_and_independent_of_the_dicts():
    data = ioi_like()
    record = TaskRecord.from_dict(data)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.answer = " Bob"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.roles["END"] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        record.fields["order"] = "BABA"  # type: ignore[index]
    data["names"]["IO"] = "Bob"
    assert record.fields["names"]["IO"] == "Mary"
    out = record.to_dict()
    out["names"]["IO"] = "Bob"
    out["roles"]["END"] = 0
    assert record.to_dict() == ioi_like()


def test_records_compare_by_value_and_pickle():
    record = TaskRecord.from_dict(ioi_like())
    assert record == TaskRecord.from_dict(copy.deepcopy(ioi_like()))
    assert record != TaskRecord.from_dict({**ioi_like(), "answer": " Anna"})
    restored = pickle.loads(pickle.dumps(record))
    assert restored == record
    assert restored.to_dict() == ioi_like()


def test_a_record_built_directly_fills_defaults_and_serialises():
    record = TaskRecord(
        task="toy",
        id=0,
        prompt="a b",
        answer=" c",
        wrong_answer=" d",
        roles=Roles({"END": 1}),
        counterfactuals={"other": Counterfactual(prompt="a x", roles={"END": 1})},
        fields={"note": "hand-made"},
    )
    assert record.candidates == (" c", " d") and record.correct == (" c",)
    data = record.to_dict()
    assert data["candidates"] == [" c", " d"]
    assert data["counterfactuals"] == {"other": {"prompt": "a x", "roles": {"END": 1}}}
    assert TaskRecord.from_dict(data) == record


def test_roles_are_a_hashable_read_only_mapping_equal_to_a_dict():
    roles = Roles({"IO": 2, "END": 9})
    assert roles == {"IO": 2, "END": 9}
    assert list(roles) == ["IO", "END"] and len(roles) == 2
    assert hash(roles) == hash(Roles({"END": 9, "IO": 2}))
    assert roles.get("S1") is None and "IO" in roles
    assert roles.to_dict() == {"IO": 2, "END": 9}


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_roles_reject_anything_but_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="role 'IO' must be a non-negative integer position"):
        Roles({"IO": bad})


# Clear errors.


def test_a_missing_role_names_it_and_the_roles_available():
    roles = TaskRecord.from_dict(ioi_like()).roles
    with pytest.raises(RoleNotFoundError) as caught:
        roles.position("S3")
    assert str(caught.value) == "no role 'S3'; roles available: IO, S1, S2, END"
    with pytest.raises(KeyError, match="no role 'S3'"):
        roles["S3"]
    with pytest.raises(RoleNotFoundError, match="no role 'END'; roles available: IO"):
        _ = Roles({"IO": 1}).end


def test_a_missing_counterfactual_names_the_record_and_the_ones_available():
    record = TaskRecord.from_dict(ioi_like())
    with pytest.raises(CounterfactualNotFoundError) as caught:
        record.counterfactual("abd")
    assert str(caught.value) == (
        "task record 3 (ioi) has no counterfactual 'abd'; counterfactuals available: flipped, abc"
    )


def _without(data: dict, *path: str) -> dict:
    data = copy.deepcopy(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return data


def _with(data: dict, value, *path: str) -> dict:
    data = copy.deepcopy(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_without(ioi_like(), "answer"), "task record 3 (ioi): field 'answer' is missing"),
        (_without(ioi_like(), "id"), "task record (ioi): field 'id' is missing"),
        (
            _with(ioi_like(), "3", "id"),
            "task record (ioi): field 'id' must be an integer, got str '3'",
        ),
        (
            _with(ioi_like(), None, "prompt"),
            "task record 3 (ioi): field 'prompt' must be a string, got null",
        ),
        (
            _with(ioi_like(), [1, 2], "roles"),
            "task record 3 (ioi): field 'roles' must be an object of role name -> token "
            "position, got list",
        ),
        (
            _with(ioi_like(), -2, "roles", "S2"),
            "task record 3 (ioi): field 'roles': role 'S2' must be a non-negative integer "
            "position, got -2",
        ),
        (
            _without(ioi_like(), "roles", "END"),
            "task record 3 (ioi): field 'roles' has no 'END' role (the position that scores "
            "the answer); roles: IO, S1, S2",
        ),
        (
            _without(ioi_like(), "counterfactuals", "flipped", "prompt"),
            "task record 3 (ioi): field 'counterfactuals.flipped.prompt' is missing",
        ),
        (
            _with(ioi_like(), 7, "counterfactuals", "abc", "answer"),
            "task record 3 (ioi): field 'counterfactuals.abc.answer' must be a string, got int 7",
        ),
        (
            _with(ioi_like(), "flipped", "counterfactuals", "abc"),
            "task record 3 (ioi): field 'counterfactuals.abc' must be an object, got str",
        ),
        (
            _without(ioi_like(), "counterfactuals"),
            "task record 3 (ioi): field 'counterfactuals' is missing",
        ),
        (
            _with(ioi_like(), [], "counterfactuals"),
            "task record 3 (ioi): field 'counterfactuals' must be an object of name -> "
            "counterfactual, got list",
        ),
        (
            _with(choice_like(), [], "candidates"),
            "task record 0 (greater_than): field 'candidates' must be a non-empty list of "
            "strings, got []",
        ),
        (
            _with(choice_like(), "4", "correct"),
            "task record 0 (greater_than): field 'correct' must be a non-empty list of "
            "strings, got '4'",
        ),
    ],
)
def test_a_malformed_record_is_a_one_line_error_naming_the_record_and_the_field(data, message):
    with pytest.raises(RecordError) as caught:
        TaskRecord.from_dict(data)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, UserFacingError) and isinstance(caught.value, ValueError)


def test_a_record_that_is_not_an_object_is_a_clear_error():
    with pytest.raises(RecordError, match="a task record must be a JSON object, got list"):
        TaskRecord.from_dict([1, 2])  # type: ignore[arg-type]


def test_extra_fields_cannot_shadow_core_fields():
    with pytest.raises(ValueError, match=r"fields \['answer'\] are attributes"):
        Counterfactual(prompt="x", roles={"END": 0}, fields={"answer": " y"})


# JSONL files.


def test_jsonl_round_trip_of_records_and_dicts(tmp_path):
    records = [TaskRecord.from_dict(ioi_like()), TaskRecord.from_dict(choice_like())]
    path = tmp_path / "tasks" / "mixed.jsonl"
    write_jsonl([records[0], choice_like()], path)  # records and dicts mix
    assert read_records(path) == records
    assert read_jsonl(path) == [ioi_like(), choice_like()]  # dicts, as before
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        ioi_like(),
        choice_like(),
    ]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_a_truncated_jsonl_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "ioi.jsonl"
    write_jsonl([ioi_like(), choice_like()], path)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # cut inside the second record
    with pytest.raises(RecordError) as caught:
        read_records(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: not a JSON record (")
    assert message.endswith("the file is corrupted or truncated, rebuild it")
    assert "\n" not in message


def test_a_record_missing_a_field_in_a_file_names_the_file_line_and_field(tmp_path):
    path = tmp_path / "ioi.jsonl"
    path.write_text(
        "\n".join([json.dumps(ioi_like()), "", json.dumps(_without(ioi_like(), "wrong_answer"))])
        + "\n"
    )
    with pytest.raises(RecordError) as caught:
        read_records(path)
    assert str(caught.value) == f"{path}:3: task record 3 (ioi): field 'wrong_answer' is missing"


def test_a_jsonl_line_that_is_not_an_object_is_a_clear_error(tmp_path):
    path = tmp_path / "ioi.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(RecordError, match=r":1: a task record must be a JSON object, got list"):
        read_records(path)


def test_end_role_is_the_one_the_generators_use():
    from circuit_repro.tasks import base

    assert END_ROLE == base.END_ROLE == "END"
