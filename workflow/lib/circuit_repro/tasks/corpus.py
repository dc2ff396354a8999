"""Training text for transcoders and sparse autoencoders, and its token windows.

A transcoder (Dunefsky, Chlenski & Nanda 2024) is trained on (MLP input, MLP output)
pairs that the model computes over a text corpus. The default run is offline, so the
text must already be on the machine:

- :func:`package_text` (default): text that ships with Python itself, namely the CPython
  reference documentation in ``pydoc_data.topics`` (about 465k characters) followed by
  the docstrings of the standard library's pure-Python modules (about 1.1M characters),
  read from their source files. It is fixed for a given Python version, available at
  once (no download, no network, no cache to fill), and it is English prose written by
  people, which is what a language model was trained to continue.
  Its limits: the domain is narrow (programming, in a technical register, with code
  fragments and many identifiers), there is no narrative, dialogue or other languages,
  and at about 1.6M characters (some 350k tokens) it is small next to the corpora
  transcoders are usually trained on (hundreds of millions of tokens of web text).
  Features specific to other domains will be rare or missing; use a hub dataset
  (:func:`hf_dataset_text`) when the hub is available and the run needs them.
- :func:`hf_dataset_text`: the first characters of a Hugging Face dataset, streamed with
  the ``datasets`` library (an optional dependency), for example WikiText-103.

:func:`token_contexts` cuts a text into fixed-length token windows and picks a seeded
subset of them.

The docstrings are read by parsing the standard library's source files (``ast``), not by
importing the modules, so that nothing runs, prints or opens windows, and the result
does not depend on which optional C extensions (``_tkinter``, ``_curses``, ...) this
Python was built with. Modules whose files some Linux distributions ship in separate
packages (``distutils``, ``lib2to3``, ``tkinter``, ``idlelib``) are left out for the same
reason. A Python installed without its ``.py`` sources gives a shorter text; the
``sha256`` of :func:`package_text_info` tells texts apart.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuit_repro.errors import UserFacingError

if TYPE_CHECKING:
    import torch

#: What :func:`package_text` is made of (recorded in :func:`package_text_info`).
PACKAGE_TEXT_SOURCE = (
    "CPython reference documentation (pydoc_data.topics) and the docstrings of the "
    "standard library's pure-Python modules"
)

# Top-level standard library modules left out of package_text: side effects or windows
# when run (this, antigravity, turtle, tkinter, idlelib, turtledemo), the test suite,
# the topics already read from pydoc_data, modules that some distributions ship apart
# (distutils, lib2to3), and generated boilerplate (encodings: one codec per file).
_SKIPPED_MODULES = frozenset(
    {
        "antigravity",
        "distutils",
        "encodings",
        "ensurepip",
        "idlelib",
        "lib2to3",
        "pydoc_data",
        "test",
        "this",
        "tkinter",
        "turtle",
        "turtledemo",
    }
)
# Folders inside packages that hold tests.
_TEST_FOLDERS = frozenset({"test", "tests", "idle_test"})
# A line that only underlines a heading ("*****", "=====").
_RULE_LINE = re.compile(r"\s*([*=\-~^#+_])\1{2,}\s*")
# Split a text where a blank line starts (after a paragraph's last character), so that
# each piece after the first begins with the blank line before its paragraph. Joining
# the pieces gives the text back.
_PARAGRAPH_END = re.compile(r"(?<=\S)(?=\n\s*\n)")


class CorpusError(UserFacingError, ValueError):
    """A corpus request that cannot be met (a malformed spec, too little text)."""


class CorpusUnavailableError(UserFacingError, RuntimeError):
    """A corpus that cannot be read here (a missing library, an unreachable dataset)."""


# ------------------------------------------------------------------ package text


def _paragraphs(text: str) -> list[str]:
    """Paragraphs of ``text`` (split at blank lines), each on one line with single
    spaces; heading underlines and empty paragraphs dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if not _RULE_LINE.fullmatch(line)]
        paragraph = " ".join(" ".join(lines).split())
        if paragraph:
            paragraphs.append(paragraph)
    return paragraphs


def _stdlib_sources(stdlib: Path) -> Iterator[Path]:
    """Source files of the public pure-Python standard library modules, in a fixed
    order: top-level names sorted, then each package's files sorted by path."""
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _SKIPPED_MODULES:
            continue
        module = stdlib / f"{name}.py"
        package = stdlib / name
        if module.is_file():
            yield module
        elif (package / "__init__.py").is_file():
            files = []
            for path in package.rglob("*.py"):
                parts = path.relative_to(package).parts
                if any(part in _TEST_FOLDERS for part in parts[:-1]):
                    continue
                if parts[-1].startswith("test_") or (
                    parts[-1].startswith("_") and parts[-1] != "__init__.py"
                ):
                    continue
                files.append(parts)
            for parts in sorted(files):
                yield package.joinpath(*parts)


_DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Fields of a statement that hold statements (or handlers and cases, which hold them).
_STATEMENT_FIELDS = ("body", "handlers", "orelse", "finalbody", "cases")


def _docstrings(source: bytes) -> list[str]:
    """Docstrings of a module, its classes and functions (nested ones and those under
    ``if`` or ``try`` too), in source order; empty when the file does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    docs: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, _DEFINITIONS):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                docs.append(doc)
        for field in _STATEMENT_FIELDS:
            children = getattr(node, field, None)
            if isinstance(children, list):
                for child in children:
                    visit(child)

    visit(tree)
    return docs


@functools.lru_cache(maxsize=1)
def package_text() -> str:
    """The default offline training text: Python's reference documentation topics,
    then the standard library's docstrings (see the module docstring).

    Paragraphs are separated by a blank line, each paragraph's whitespace collapsed to
    single spaces. A docstring that appeared before (after that normalisation) is left
    out. The same Python version gives the same text.
    """
    from pydoc_data.topics import topics

    paragraphs: list[str] = []
    for key in sorted(topics):
        paragraphs.extend(_paragraphs(topics[key]))
    seen: set[str] = set()
    stdlib = Path(sysconfig.get_path("stdlib"))
    for path in _stdlib_sources(stdlib):
        for doc in _docstrings(path.read_bytes()):
            normalised = _paragraphs(doc)
            key = "\n".join(normalised)
            if normalised and key not in seen:
                seen.add(key)
                paragraphs.extend(normalised)
    return "\n\n".join(paragraphs)


def package_text_info() -> dict[str, Any]:
    """Provenance of :func:`package_text`: ``{source, python_version, n_chars, sha256}``."""
    text = package_text()
    return {
        "source": PACKAGE_TEXT_SOURCE,
        "python_version": platform.python_version(),
        "n_chars": len(text),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


# -------------------------------------------------------------------- hub datasets


def _parse_hf_spec(spec: str) -> tuple[str, str | None, str, str]:
    parts = spec.split(":")
    if len(parts) != 5 or parts[0] != "hf" or not all(parts[i] for i in (1, 3, 4)):
        raise CorpusError(
            f"corpus spec {spec!r}: expected hf:<dataset>:<config>:<split>:<column>, "
            "for example hf:wikitext:wikitext-103-raw-v1:train:text (config may be empty)"
        )
    _, path, config, split, column = parts
    return path, config or None, split, column


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def hf_dataset_text(spec: str, n_chars: int) -> str:
    """The first ``n_chars`` characters of a Hugging Face dataset's text column.

    Args:
        spec: ``hf:<dataset>:<config>:<split>:<column>``, for example
            ``hf:wikitext:wikitext-103-raw-v1:train:text``; the config may be empty
            (``hf:<dataset>::<split>:<column>``).
        n_chars: Characters to return (fewer if the split is shorter).

    The split is streamed (nothing beyond what is read is downloaded). Rows are
    stripped, empty rows skipped, and the rest joined by blank lines, so that each row
    is a paragraph for :func:`token_contexts`.

    Raises:
        CorpusError: A malformed spec, or a column the dataset does not have.
        CorpusUnavailableError: The ``datasets`` library is not installed, or the
            dataset cannot be read (offline, unknown name).
    """
    path, config, split, column = _parse_hf_spec(spec)
    try:
        import datasets
    except ImportError:
        raise CorpusUnavailableError(
            f"corpus {spec!r} needs the datasets library: pip install datasets"
        ) from None
    pieces: list[str] = []
    total = 0
    try:
        rows = iter(datasets.load_dataset(path, config, split=split, streaming=True))
        while total < n_chars:
            row = next(rows, None)
            if row is None:
                break
            if column not in row:
                raise CorpusError(
                    f"corpus {spec!r}: no column {column!r}; the rows have "
                    f"{', '.join(map(str, row))}"
                )
            text = str(row[column]).strip()
            if text:
                pieces.append(text)
                total += len(text) + 2
    except UserFacingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the hub or the library
        raise CorpusUnavailableError(
            f"could not stream corpus {spec!r} with datasets ({_first_line(exc)}); check "
            "the name and that the hub is reachable, or use the offline package text"
        ) from exc
    return "\n\n".join(pieces)[:n_chars]


# ------------------------------------------------------------------ token windows


def default_bos(tokenizer: Any) -> int | None:
    """The BOS token id when the tokenizer prepends it by default (Gemma's ``<bos>``),
    else None (SmolLM2's and GPT-2's tokenizers define a BOS token but do not add it)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a").input_ids
    return bos if len(ids) > 0 and ids[0] == bos else None


def token_ids(tokenizer: Any, text: str, chunk: int = 1024) -> torch.Tensor:
    """Token ids of ``text`` without special tokens, ``[n_tokens]`` (int64).

    The text is tokenised a paragraph at a time (each paragraph with the blank lines
    before it) and the ids concatenated; ``chunk`` paragraphs go to the tokenizer per
    call. Pieces end at a paragraph's last character, where byte-level pre-tokenizers
    split anyway, so the ids equal those of the whole text tokenised at once (checked
    for SmolLM2's, Gemma 3's and the tiny models' tokenizers). Cutting after the blank
    line instead would give SmolLM2 one ``"\\n\\n"`` token per paragraph break where the
    whole text has two ``"\\n"``.
    """
    import numpy as np
    import torch

    pieces = _PARAGRAPH_END.split(text)
    parts = []
    for start in range(0, len(pieces), chunk):
        encoded = tokenizer(pieces[start : start + chunk], add_special_tokens=False, verbose=False)
        parts.extend(np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(flat)


def token_contexts(
    tokenizer: Any, text: str, context_length: int, n_contexts: int, seed: int
) -> torch.Tensor:
    """``n_contexts`` windows of ``context_length`` consecutive tokens of ``text``,
    ``[n_contexts, context_length]`` (int64).

    The text's tokens (:func:`token_ids`) are cut into non-overlapping windows, and a
    permutation seeded by ``seed`` chooses which ones, in which order.

    Each window starts the way the model's inputs started in training: when the
    tokenizer prepends a BOS token by default (:func:`default_bos`: Gemma), every
    window is BOS followed by ``context_length - 1`` text tokens; otherwise (SmolLM2,
    GPT-2) it is ``context_length`` text tokens. Either way the first position is an
    outlier that activation collection skips.

    Raises:
        CorpusError: The text has fewer windows than ``n_contexts`` (the message gives
            the available count), or ``context_length`` leaves no room for text.
    """
    import torch

    bos = default_bos(tokenizer)
    width = context_length - (bos is not None)
    if n_contexts < 1:
        raise CorpusError(f"n_contexts must be at least 1, not {n_contexts}")
    if width < 1:
        raise CorpusError(
            f"context_length {context_length} leaves no text tokens"
            + (" after BOS" if bos is not None else "")
            + "; use a longer context"
        )
    ids = token_ids(tokenizer, text)
    available = len(ids) // width
    if n_contexts > available:
        raise CorpusError(
            f"the text gives only {available} windows of {context_length} tokens "
            f"({len(ids)} tokens), fewer than the {n_contexts} requested; lower "
            "n_contexts or context_length, or use a longer text"
        )
    windows = ids[: available * width].view(available, width)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    chosen = windows[order[:n_contexts]]
    if bos is not None:
        chosen = torch.cat([torch.full((n_contexts, 1), bos, dtype=torch.long), chosen], dim=1)
    return chosen.contiguous()
