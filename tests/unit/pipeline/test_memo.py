"""The per-item memo of multi-item jobs: keys follow content, entries come back byte for byte."""

from __future__ import annotations

from pathlib import Path

from circuit_repro.pipeline.memo import Memo, code_fingerprint, fingerprint


def test_fingerprint_changes_with_file_content_and_settings(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 0}\n')
    base = fingerprint([prompts], batch_size=16)
    assert base == fingerprint([prompts], batch_size=16)
    assert base != fingerprint([prompts], batch_size=32)
    prompts.write_text('{"id": 1}\n')
    assert base != fingerprint([prompts], batch_size=16)


def test_code_fingerprint_covers_the_whole_library():
    """Every file of the package counts (a memo entry cannot outlive the code)."""
    import circuit_repro

    assert len(code_fingerprint()) == 64
    assert (Path(circuit_repro.__file__).parent / "engine" / "forward.py").exists()


def test_memo_returns_what_was_stored_and_drops_stale_entries(tmp_path):
    memo = Memo(tmp_path / ".memo")
    assert memo.get("ioi.csv", "a" * 64) is None
    text = "value\n0.1\n1e-17\n"
    memo.put("ioi.csv", "a" * 64, text)
    assert memo.get("ioi.csv", "a" * 64) == text
    assert memo.get("ioi.csv", "b" * 64) is None
    memo.put("ioi.csv", "b" * 64, "value\n2\n")
    memo.put("facts.csv", "a" * 64, "value\n3\n")
    memo.put("ioi-heads.csv", "a" * 64, "head\n1\n")
    assert memo.get("ioi.csv", "a" * 64) is None  # replaced by the newer key
    assert memo.get("facts.csv", "a" * 64) == "value\n3\n"
    assert memo.get("ioi-heads.csv", "a" * 64) == "head\n1\n"
    assert memo.get_all(["ioi.csv", "facts.csv"], "a" * 64) is None
    assert memo.get_all(["ioi-heads.csv", "facts.csv"], "a" * 64) is not None
    names = sorted(p.name.split(".")[0] for p in (tmp_path / ".memo").iterdir())
    assert names == ["facts", "ioi", "ioi-heads"]
