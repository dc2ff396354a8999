"""Prepared models are checked on load: a truncated or overwritten file gives one line
naming the model and the fix, and the workflow (or ensure_prepared) prepares it again."""

from __future__ import annotations

import json

import pytest

from circuit_repro.models.fetch import ModelUnavailableError
from circuit_repro.models.load import load_model
from circuit_repro.models.prepare import PROVENANCE, ensure_prepared
from circuit_repro.models.registry import load_registry
from circuit_repro.models.verify import corruption, invalidate_if_corrupted, verify_prepared

MODEL = "tiny-llama"


@pytest.fixture
def prepared(tmp_path):
    return ensure_prepared(MODEL, load_registry(), resources=tmp_path / "resources")


def test_provenance_records_every_file_size(prepared):
    record = json.loads((prepared / PROVENANCE).read_text())
    assert record["files"]["model.safetensors"] == (prepared / "model.safetensors").stat().st_size
    assert "config.json" in record["files"] and PROVENANCE not in record["files"]
    assert corruption(prepared) is None
    verify_prepared(prepared)  # no error


def test_a_truncated_weights_file_is_one_line_naming_the_model_and_the_fix(prepared):
    weights = prepared / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert corruption(prepared) == (
        f"model.safetensors has 1000 bytes, {json.loads((prepared / PROVENANCE).read_text())['files']['model.safetensors']} expected"
    )
    with pytest.raises(ModelUnavailableError) as info:
        load_model(prepared)
    message = str(info.value)
    assert "\n" not in message
    assert f"prepared model {MODEL!r}" in message and "make reproduce" in message


def test_same_size_overwrite_is_caught_by_the_hash(prepared):
    weights = prepared / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8) if data[-8:] != bytes(8) else b"\x01" * 8
    weights.write_bytes(bytes(data))
    assert corruption(prepared) is None  # sizes agree
    with pytest.raises(ModelUnavailableError, match="does not match the sha256"):
        verify_prepared(prepared)


def test_a_corrupted_folder_is_prepared_again(prepared, tmp_path, capsys):
    (prepared / "tokenizer.json").unlink()
    assert invalidate_if_corrupted(prepared)
    assert "tokenizer.json is missing): preparing it again" in capsys.readouterr().err
    assert not (prepared / PROVENANCE).exists()
    assert not invalidate_if_corrupted(prepared)  # nothing left to invalidate
    again = ensure_prepared(MODEL, load_registry(), resources=tmp_path / "resources")
    assert corruption(again) is None
    load_model(again)


def test_ensure_prepared_repairs_a_truncated_model(prepared, tmp_path):
    weights = prepared / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    again = ensure_prepared(MODEL, load_registry(), resources=tmp_path / "resources")
    load_model(again)  # re-prepared, loads


def test_the_hash_is_remembered_per_file_state(prepared):
    from circuit_repro.models.verify import _HASHED, VERIFIED

    verify_prepared(prepared)
    remembered = json.loads((prepared / VERIFIED).read_text())
    weights = prepared / "model.safetensors"
    assert remembered["model.safetensors"][0] == weights.stat().st_size
    _HASHED.clear()  # a new process: the file state on disk says it was verified
    verify_prepared(prepared)
    assert not _HASHED
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, new state: hashed again
    with pytest.raises(ModelUnavailableError, match="does not match the sha256"):
        verify_prepared(prepared)
