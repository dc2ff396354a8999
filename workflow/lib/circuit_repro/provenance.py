"""Provenance written beside every result: what produced it, from what, with which code.

Each result file ``X`` gets a sidecar ``X.provenance.json`` (or, for a folder such as a
prepared model, ``provenance.json`` inside it) recording the rule, its wildcards, the
configuration slice, seed, inputs, package versions and git commit. Two runs with the
same sidecar contents on the same machine produce identical numbers.

Rules do not write sidecars by hand: :func:`circuit_repro.pipeline.rule_context.rule_context`
writes one for every file output of the rule.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from circuit_repro.paths import REPO_ROOT

TRACKED_PACKAGES = (
    "circuit-repro",
    "torch",
    "transformers",
    "transformer-lens",
    "tokenizers",
    "safetensors",
    "gguf",
    "numpy",
    "snakemake",
)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that can change a result."""
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(repo: Path = REPO_ROOT) -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ; ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def provenance_record(**fields: Any) -> dict[str, Any]:
    """A provenance dict: the caller's fields plus environment, versions and commit."""
    return {
        **fields,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
    }


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed into place), so an interrupted
    run never leaves a half-written file that looks finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    partial.replace(path)


SIDECAR_SUFFIX = ".provenance.json"
FOLDER_PROVENANCE = "provenance.json"


def sidecar_path(result_path: str | Path) -> Path:
    """Where the provenance of ``result_path`` goes: ``<result>.provenance.json`` beside it."""
    result_path = Path(result_path)
    return result_path.with_name(result_path.name + SIDECAR_SUFFIX)


def is_provenance_file(path: str | Path) -> bool:
    """Whether ``path`` is itself a provenance record (it gets no sidecar of its own)."""
    name = Path(path).name
    return name == FOLDER_PROVENANCE or name.endswith(SIDECAR_SUFFIX)


def plain_data(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are plain JSON data (config slices, numbers, paths
    as strings); callables, objects and anything else JSON cannot hold are left out."""
    kept = {}
    for name, value in values.items():
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            continue
        kept[name] = value
    return kept


def write_sidecar(result_path: str | Path, **fields: Any) -> Path:
    """Write ``<result>.provenance.json`` beside ``result_path`` and return its path."""
    sidecar = sidecar_path(result_path)
    write_json(sidecar, provenance_record(result=Path(result_path).name, **fields))
    return sidecar


#: The PNG text chunk that holds a figure's provenance (JSON).
PNG_PROVENANCE_KEY = "circuit-repro:provenance"


def figure_metadata(path: str | Path, provenance: Mapping[str, Any]) -> dict[str, str]:
    """``metadata=`` for matplotlib's ``savefig`` of ``path``: the figure's provenance as
    JSON, in a PNG text chunk (:data:`PNG_PROVENANCE_KEY`) or the PDF's ``Subject``
    (PDF info dictionaries take a fixed set of keys); nothing for other formats."""
    text = json.dumps(dict(provenance), sort_keys=True, default=str)
    title = Path(path).stem
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return {"Title": title, "Software": "circuit-repro", PNG_PROVENANCE_KEY: text}
    if suffix == ".pdf":
        return {"Title": title, "Creator": "circuit-repro", "Subject": text}
    return {}


def _pdf_literal_string(data: bytes, start: int) -> str:
    """The PDF literal string whose opening parenthesis is at ``data[start]``."""
    out, depth, i = bytearray(), 0, start
    escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}
    while i < len(data):
        byte = data[i]
        if byte == ord("\\"):
            i += 1
            out += escapes.get(data[i], bytes([data[i]]))
        elif byte == ord("("):
            if depth:
                out.append(byte)
            depth += 1
        elif byte == ord(")"):
            depth -= 1
            if depth == 0:
                break
            out.append(byte)
        else:
            out.append(byte)
        i += 1
    return out.decode("latin-1")


def read_figure_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance :func:`figure_metadata` put into a PNG or PDF ({} if none)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as image:
            text = image.text.get(PNG_PROVENANCE_KEY)
        return json.loads(text) if text else {}
    if path.suffix.lower() == ".pdf":
        data = path.read_bytes()
        at = data.rfind(b"/Subject (")
        return json.loads(_pdf_literal_string(data, at + len(b"/Subject "))) if at >= 0 else {}
    return {}


def prepared_weights_sha256(model: str, models_folder: str | Path = "resources/models") -> dict:
    """``{file: sha256}`` of a prepared model's weights, from its ``provenance.json``
    ({} when the model is not prepared there, e.g. a checkpoint series' name)."""
    try:
        record = json.loads((Path(models_folder) / model / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}
    return dict(record.get("safetensors_sha256") or {})
