"""Training text for transcoders: the offline package text, hub datasets, token windows."""

from __future__ import annotations

import hashlib
import string
import sys
import types
from collections import Counter

import pytest
import torch

from circuit_repro.models.tiny import build_offline_tokenizer
from circuit_repro.tasks import corpus
from circuit_repro.tasks.corpus import (
    CorpusError,
    CorpusUnavailableError,
    default_bos,
    hf_dataset_text,
    package_text,
    package_text_info,
    token_contexts,
    token_ids,
)

# ------------------------------------------------------------------ package text


def test_package_text_is_long_mostly_printable_english_and_deterministic():
    text = package_text()
    assert len(text) > 1_000_000
    characters = Counter(text)
    printable = sum(n for c, n in characters.items() if c in string.printable)
    assert printable / len(text) > 0.99
    letters = sum(n for c, n in characters.items() if c.isalpha() or c == " ")
    assert letters / len(text) > 0.85
    words = Counter(text.split())
    for common in ("the", "of", "is", "to", "and"):
        assert words[common] > 2_000, common
    # Both sources are there: a reference topic and a standard library docstring.
    assert 'The "assert" statement' in text
    assert "Fraction" in text
    # One paragraph per line, separated by blank lines, no heading underlines.
    assert "\n\n\n" not in text
    paragraphs = text.split("\n\n")
    assert all(p and "\n" not in p and p == " ".join(p.split()) for p in paragraphs)
    assert not any(set(p) <= set("*=-~^") for p in paragraphs)
    # Rebuilt from scratch (not the cached string), the text is the same.
    corpus.package_text.cache_clear()
    assert package_text() == text


def test_package_text_info_describes_the_text():
    info = package_text_info()
    text = package_text()
    assert set(info) == {"source", "python_version", "n_chars", "sha256"}
    assert info["n_chars"] == len(text)
    assert info["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert info["python_version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")


def test_skipped_modules_and_test_files_are_left_out(tmp_path):
    """Only public, non-test source files of listed top-level modules are read."""
    (tmp_path / "json").mkdir()
    for name in ("__init__.py", "decoder.py", "_private.py", "test_json.py"):
        (tmp_path / "json" / name).write_text('"""doc"""\n')
    (tmp_path / "json" / "tests").mkdir()
    (tmp_path / "json" / "tests" / "support.py").write_text('"""doc"""\n')
    for name in ("this.py", "_pydecimal.py", "textwrap.py"):
        (tmp_path / name).write_text('"""doc"""\n')
    found = [p.relative_to(tmp_path).as_posix() for p in corpus._stdlib_sources(tmp_path)]
    assert found == ["json/__init__.py", "json/decoder.py", "textwrap.py"]


def test_docstrings_come_in_source_order_with_nested_definitions():
    source = b'''"""Module."""
class A:
    """Class A."""
    def f(self):
        """Method f."""
        def inner():
            """Inner."""
def g():
    pass
async def h():
    """Coroutine h."""
try:
    from _c import k
except ImportError:
    def k():
        """Fallback k."""
'''
    assert corpus._docstrings(source) == [
        "Module.",
        "Class A.",
        "Method f.",
        "Inner.",
        "Coroutine h.",
        "Fallback k.",
    ]
    assert corpus._docstrings(b"def broken(:\n") == []


# -------------------------------------------------------------------- hub datasets


def _fake_datasets(rows, calls):
    module = types.ModuleType("datasets")

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return iter(rows)

    module.load_dataset = load_dataset
    return module


def test_hf_dataset_text_streams_the_first_characters(monkeypatch):
    rows = [{"text": " = Title = \n"}, {"text": "\n"}, {"text": " First paragraph.\n"}] + [
        {"text": f"Row {i} " + "x" * 50} for i in range(1000)
    ]
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(rows, calls))
    text = hf_dataset_text("hf:wikitext:wikitext-103-raw-v1:train:text", 120)
    assert calls == [("wikitext", "wikitext-103-raw-v1", "train", True)]
    assert len(text) == 120
    assert text.startswith("= Title =\n\nFirst paragraph.\n\nRow 0 xxx")
    # An empty config is None; a short split gives what there is.
    calls.clear()
    short = hf_dataset_text("hf:org/data::validation:text", 1_000_000)
    assert calls == [("org/data", None, "validation", True)]
    assert short.endswith("Row 999 " + "x" * 50) and len(short) < 1_000_000


def test_hf_dataset_text_errors_are_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(CorpusUnavailableError, match="pip install datasets") as missing:
        hf_dataset_text("hf:wikitext:wikitext-103-raw-v1:train:text", 100)
    assert "\n" not in str(missing.value)

    with pytest.raises(CorpusError, match="hf:<dataset>:<config>:<split>:<column>"):
        hf_dataset_text("wikitext:train", 100)

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets([{"content": "a"}], []))
    with pytest.raises(CorpusError, match="no column 'text'.*content"):
        hf_dataset_text("hf:d::train:text", 100)

    failing = types.ModuleType("datasets")

    def unreachable(*args, **kwargs):
        raise ConnectionError("offline\nlong traceback text")

    failing.load_dataset = unreachable
    monkeypatch.setitem(sys.modules, "datasets", failing)
    with pytest.raises(CorpusUnavailableError, match="ConnectionError: offline") as offline:
        hf_dataset_text("hf:d::train:text", 100)
    assert "\n" not in str(offline.value)


# ------------------------------------------------------------------ token windows


@pytest.fixture(scope="module")
def text() -> str:
    """A few thousand tokens of real prose (no two windows alike)."""
    return package_text()[:20_000]


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The tiny models' tokenizer, made to prepend BOS by default (as Gemma's does)."""
    tokenizer = build_offline_tokenizer()
    tokenizer.add_bos_token = True
    return tokenizer


def test_default_bos(random_tokenizer, bos_tokenizer):
    assert random_tokenizer.bos_token_id is not None
    assert default_bos(random_tokenizer) is None
    assert default_bos(bos_tokenizer) == bos_tokenizer.bos_token_id


def test_token_ids_equal_the_whole_text_tokenised_at_once(random_tokenizer, text):
    ids = token_ids(random_tokenizer, text, chunk=7)
    assert ids.dtype == torch.long
    whole = random_tokenizer(text, add_special_tokens=False).input_ids
    assert ids.tolist() == whole


def _windows_of(ids: torch.Tensor, width: int) -> dict[tuple[int, ...], int]:
    """Non-overlapping windows of ``ids`` -> their index."""
    n = len(ids) // width
    return {tuple(ids[i * width : (i + 1) * width].tolist()): i for i in range(n)}


def test_token_contexts_are_seeded_consecutive_windows(random_tokenizer, text):
    contexts = token_contexts(random_tokenizer, text, 16, 20, seed=0)
    assert contexts.shape == (20, 16) and contexts.dtype == torch.long
    assert torch.equal(contexts, token_contexts(random_tokenizer, text, 16, 20, seed=0))
    assert not torch.equal(contexts, token_contexts(random_tokenizer, text, 16, 20, seed=1))
    windows = _windows_of(token_ids(random_tokenizer, text), 16)
    picked = [windows[tuple(row.tolist())] for row in contexts]  # each is a window
    assert len(set(picked)) == 20  # distinct windows
    assert picked != sorted(picked)  # in a shuffled order
    # No BOS for a tokenizer that does not add one.
    assert (contexts != random_tokenizer.bos_token_id).all()


def test_token_contexts_prepend_bos_when_the_tokenizer_does(bos_tokenizer, text):
    bos = bos_tokenizer.bos_token_id
    contexts = token_contexts(bos_tokenizer, text, 16, 10, seed=3)
    assert contexts.shape == (10, 16)
    assert (contexts[:, 0] == bos).all()
    assert (contexts[:, 1:] != bos).all()
    windows = _windows_of(token_ids(bos_tokenizer, text), 15)
    assert all(tuple(row[1:].tolist()) in windows for row in contexts)


def test_token_contexts_too_few_windows_is_a_one_line_error(random_tokenizer, bos_tokenizer, text):
    available = len(token_ids(random_tokenizer, text)) // 64
    token_contexts(random_tokenizer, text, 64, available, seed=0)  # exactly enough
    with pytest.raises(CorpusError, match=f"only {available} windows of 64 tokens") as error:
        token_contexts(random_tokenizer, text, 64, available + 1, seed=0)
    assert "\n" not in str(error.value)
    with pytest.raises(CorpusError, match="after BOS"):
        token_contexts(bos_tokenizer, text, 1, 1, seed=0)
