"""The per-item memo of multi-item jobs: keys follow content, entries come back byte for byte."""

from __future__ import annotations

from circuit_repro.pipeline.memo import Memo, fingerprint


def test_fingerprint_changes_with_file_content_settings_and_code(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 0}\n')
    base = fingerprint([prompts], ["circuit_repro.pipeline.memo"], batch_size=16)
    assert base == fingerprint([prompts], ["circuit_repro.pipeline.memo"], batch_size=16)
    assert base != fingerprint([prompts], ["circuit_repro.pipeline.memo"], batch_size=32)
    assert base != fingerprint([prompts], ["circuit_repro.pipeline.rule_context"], batch_size=16)
    prompts.write_text('{"id": 1}\n')
    assert base != fingerprint([prompts], ["circuit_repro.pipeline.memo"], batch_size=16)


def test_memo_returns_what_was_stored_and_drops_stale_entries(tmp_path):
    memo = Memo(tmp_path / ".memo")
    assert memo.get("ioi", "a" * 64) is None
    text = "value\n0.1\n1e-17\n"
    memo.put("ioi", "a" * 64, text)
    assert memo.get("ioi", "a" * 64) == text
    assert memo.get("ioi", "b" * 64) is None
    memo.put("ioi", "b" * 64, "value\n2\n")
    memo.put("facts", "a" * 64, "value\n3\n")
    assert memo.get("ioi", "a" * 64) is None  # replaced by the newer key
    assert memo.get("facts", "a" * 64) == "value\n3\n"
    assert sorted(p.name.split(".")[0] for p in (tmp_path / ".memo").iterdir()) == ["facts", "ioi"]
