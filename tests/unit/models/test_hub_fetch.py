"""Hub models (``source: hf``) fetched and prepared through a local hub server.

The repo is a tiny random Qwen2 saved like a hub checkpoint and published on
``local_hub`` under the registry's ``qwen2.5-1.5b-instruct`` repo, so the registry entry
is used as it is; nothing goes to the network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from hub_server import LocalHub
from safetensors.torch import load_file

from circuit_repro.models.fetch import ModelUnavailableError, fetch_model
from circuit_repro.models.load import load_model
from circuit_repro.models.prepare import prepare_model
from circuit_repro.models.tiny import (
    RandomModelSpec,
    build_offline_tokenizer,
    build_random_model,
    save_random_model,
)
from circuit_repro.pipeline.config import load_registry

MODEL_ID = "qwen2.5-1.5b-instruct"
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def entry(registry):
    entry = dict(registry[MODEL_ID])
    assert entry["source"] == "hf" and entry["revision"] == "main"
    return entry


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, registry) -> dict[str, Path]:
    """Two tiny Qwen2 checkpoints, ``old`` and ``new`` (different seeds), saved as a hub
    repo would hold them, plus a README that the fetch must skip."""
    tokenizer = build_offline_tokenizer()
    architecture = registry["tiny-qwen2"]["architecture"]
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for name, seed in (("old", 1), ("new", 2)):
        spec = RandomModelSpec(architecture="qwen2", seed=seed, **architecture)
        folder = save_random_model(build_random_model(spec, tokenizer), tokenizer, root / name)
        (folder / "README.md").write_text("# Not a weight file\n")
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def commits(local_hub, checkpoints, entry) -> dict[str, str]:
    """The repo's history on the hub: ``old`` on main, then ``new`` on main (main moved
    on); branch ``step1000`` keeps ``old``. Returns the commit of each."""
    repo = entry["repo"]
    old = local_hub.publish(repo, checkpoints["old"], revision="main")
    new = local_hub.publish(repo, checkpoints["new"], revision="main")
    assert local_hub.publish(repo, checkpoints["old"], revision="step1000") == old
    assert old != new
    return {"old": old, "new": new}


def _fetch(entry, downloads: Path, **override) -> dict:
    """fetch_model for ``entry`` (with ``override`` applied); returns the manifest."""
    return json.loads(fetch_model(MODEL_ID, {**entry, **override}, downloads).read_text())


def test_hf_model_is_downloaded_and_prepared(
    local_hub, hub_client, commits, checkpoints, entry, tmp_path
):
    cache = hub_client(local_hub.endpoint)
    before = len(local_hub.requests)
    manifest = _fetch(entry, tmp_path / "downloads")

    repo = entry["repo"]
    snapshot = Path(manifest["snapshot"])
    assert manifest["repo"] == repo and manifest["revision"] == "main"
    assert (
        snapshot.resolve()
        == (cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commits["new"]).resolve()
    )
    published = {p.name for p in checkpoints["new"].iterdir()}
    assert {p.name for p in snapshot.iterdir()} == published - {"README.md"}

    served = [(r.method, r.path, r.status) for r in local_hub.requests[before:]]
    assert ("GET", f"/api/models/{repo}/revision/main", 200) in served
    assert ("GET", f"/{repo}/resolve/{commits['new']}/config.json", 200) in served
    # The weights came the LFS way: a redirect, then the download from the CDN.
    assert ("HEAD", f"/{repo}/resolve/{commits['new']}/model.safetensors", 302) in served
    assert any(m == "GET" and p.startswith("/blobs/") and s == 200 for m, p, s in served)
    assert not any(p.endswith("README.md") for _, p, _ in served)

    prepare_model(MODEL_ID, entry, tmp_path / "downloads", tmp_path / "model")
    model, tokenizer = load_model(tmp_path / "model")
    expected = load_file(checkpoints["new"] / "model.safetensors")
    state = model.state_dict()
    assert expected.keys() <= state.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    reference = build_offline_tokenizer()
    assert tokenizer(PROMPT).input_ids == reference(PROMPT).input_ids


@pytest.mark.parametrize(
    ("revision", "expected"),
    [("main", "new"), ("step1000", "old"), ("commit of old", "old")],
)
def test_pinned_revision_is_the_one_fetched(
    local_hub, hub_client, commits, checkpoints, entry, tmp_path, revision, expected
):
    hub_client(local_hub.endpoint)
    if revision == "commit of old":
        revision = commits["old"]
    manifest = _fetch(entry, tmp_path / "downloads", revision=revision)
    snapshot = Path(manifest["snapshot"])
    assert manifest["revision"] == revision
    assert snapshot.name == commits[expected]
    weights = (snapshot / "model.safetensors").read_bytes()
    assert weights == (checkpoints[expected] / "model.safetensors").read_bytes()


def test_second_fetch_comes_from_the_cache(hub_client, checkpoints, entry, tmp_path, monkeypatch):
    """Once fetched, a model needs no hub: not when the hub is down, nor when offline."""
    with LocalHub() as hub:
        commit = hub.publish(entry["repo"], checkpoints["new"])
        hub_client(hub.endpoint)
        first = _fetch(entry, tmp_path / "first")
        assert any(r.path.startswith("/blobs/") for r in hub.requests)
    # The hub is stopped: its port now refuses connections.
    second = _fetch(entry, tmp_path / "second")
    assert second["snapshot"] == first["snapshot"]
    assert Path(second["snapshot"]).name == commit

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _fetch(entry, tmp_path / "offline")["snapshot"] == first["snapshot"]

    # A revision that is not cached fails fast, naming the model.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        _fetch(entry, tmp_path / "uncached", revision="step1000")
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert MODEL_ID in message and "unreachable" in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"repo": "Qwen/No-Such-Model"}, "RepositoryNotFoundError"),
        ({"revision": "no-such-branch"}, "RevisionNotFoundError"),
    ],
)
def test_unknown_repo_or_revision_is_a_one_line_error(
    local_hub, hub_client, commits, entry, tmp_path, override, error
):
    hub_client(local_hub.endpoint)
    with pytest.raises(ModelUnavailableError) as info:
        _fetch(entry, tmp_path / "downloads", **override)
    message = str(info.value)
    repo = override.get("repo", entry["repo"])
    assert MODEL_ID in message and repo in message and error in message
    assert "\n" not in message
    assert not (tmp_path / "downloads" / "fetched.json").exists()


def test_environment_alone_points_a_subprocess_at_the_hub(
    local_hub, hub_client, commits, entry, tmp_path
):
    """Snakemake runs fetch_model in another process, which sees only the environment."""
    cache = hub_client(local_hub.endpoint)
    before = len(local_hub.requests)
    code = (
        "import sys; from circuit_repro.models.fetch import fetch_model; "
        "fetch_model(sys.argv[1], {'source': 'hf', 'repo': sys.argv[2], 'revision': 'main'}, "
        "sys.argv[3])"
    )
    downloads = tmp_path / "downloads"
    subprocess.run(
        [sys.executable, "-c", code, MODEL_ID, entry["repo"], str(downloads)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    snapshot = Path(json.loads((downloads / "fetched.json").read_text())["snapshot"])
    assert snapshot.resolve().is_relative_to(cache.resolve())
    assert snapshot.name == commits["new"]
    assert any(r.path.startswith("/blobs/") for r in local_hub.requests[before:])


def test_local_hub_answers_byte_ranges(local_hub, commits, checkpoints, entry):
    """The client resumes an interrupted download with ``Range: bytes=<done>-``."""
    url = f"{local_hub.endpoint}/{entry['repo']}/resolve/main/config.json"
    data = (checkpoints["new"] / "config.json").read_bytes()

    def get(range_header: str) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers={"Range": range_header})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, b""

    assert get("bytes=5-14") == (206, data[5:15])
    assert get("bytes=20-") == (206, data[20:])
    assert get("bytes=-4") == (206, data[-4:])
    assert get(f"bytes={len(data)}-")[0] == 416


def test_a_download_cut_mid_file_resumes(hub_client, checkpoints, entry, tmp_path, monkeypatch):
    """The connection drops halfway through the weights: the fetch (or, failing that,
    the next one) resumes from the bytes it has, asking for the rest by range, and ends
    with the published file."""
    from huggingface_hub import constants

    # The client keeps what it received in whole chunks (10 MB by default, more than
    # this tiny file): smaller chunks make the cut land after some of them.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    with LocalHub() as hub:
        hub.publish(entry["repo"], checkpoints["new"])
        hub_client(hub.endpoint)
        size = (checkpoints["new"] / "model.safetensors").stat().st_size
        hub.cut_next_download(size // 2)
        try:
            manifest = _fetch(entry, tmp_path / "downloads")
        except ModelUnavailableError as error:
            assert "\n" not in str(error)
            manifest = _fetch(entry, tmp_path / "downloads")  # the retry
        ranged = [r for r in hub.requests if r.path.startswith("/blobs/") and r.range]
        blobs = [r for r in hub.requests if "blobs" in r.path]
        assert ranged and ranged[-1].range.startswith("bytes="), blobs
        resumed_from = int(ranged[-1].range.removeprefix("bytes=").split("-")[0])
        assert 0 < resumed_from <= size // 2
    weights = (Path(manifest["snapshot"]) / "model.safetensors").read_bytes()
    assert weights == (checkpoints["new"] / "model.safetensors").read_bytes()
