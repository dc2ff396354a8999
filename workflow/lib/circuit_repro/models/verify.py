"""Is a prepared model folder still what was prepared?

``provenance.json`` (written last by :func:`~circuit_repro.models.prepare.prepare_model`)
records the size of every file of the folder and the sha256 of its weights. A file
truncated or overwritten since then would otherwise pass as prepared (Snakemake sees
the marker) and fail later with a safetensors traceback, or worse, load.

- :func:`corruption`: the cheap check (file sizes; no reading), run when the workflow
  builds its DAG and on every load;
- :func:`verify_prepared`: sizes, and the weights' sha256 once per process for each
  file state (path, size, modification time), raising one line that names the model
  and the fix;
- :func:`invalidate_if_corrupted`: removes the marker of a corrupted folder, so the
  workflow prepares the model again.

This module is torch-free (the workflow imports it to build the DAG).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from circuit_repro.models.fetch import ModelUnavailableError
from circuit_repro.provenance import sha256_file, write_json

PROVENANCE = "provenance.json"
#: File states whose sha256 matched, so later processes need not hash them again:
#: ``{name: [size, mtime_ns]}``. Overwriting or truncating a file changes its state.
VERIFIED = ".verified.json"

#: sha256 already checked in this process: (path, size, mtime_ns) -> digest.
_HASHED: dict[tuple[str, int, int], str] = {}


def file_sizes(model_dir: str | Path) -> dict[str, int]:
    """Size in bytes of every file of a prepared folder but its marker."""
    return {p.name: p.stat().st_size for p in sorted(Path(model_dir).iterdir())
            if p.is_file() and p.name != PROVENANCE and not p.name.startswith(".")}  # fmt: skip


def _record(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None


def corruption(model_dir: str | Path) -> str | None:
    """What is wrong with a prepared folder, in words, or None. Compares the files with
    the sizes its marker records (a marker without sizes: only that the weights exist);
    an unreadable marker is itself the problem."""
    model_dir = Path(model_dir)
    if not (model_dir / PROVENANCE).exists():
        return None  # not prepared: nothing to check
    record = _record(model_dir)
    if record is None:
        return f"{PROVENANCE} cannot be read"
    expected = record.get("files") or dict.fromkeys(record.get("safetensors_sha256", {}))
    for name, size in expected.items():
        path = model_dir / name
        if not path.exists():
            return f"{name} is missing"
        if size is not None and path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} expected"
    return None


def _fix(model_id: str, model_dir: Path) -> str:
    return f"run `make reproduce` (it prepares {model_id} again) or delete {model_dir} and rerun"


def verify_prepared(model_dir: str | Path, model_id: str | None = None) -> None:
    """Raise :class:`~circuit_repro.models.fetch.ModelUnavailableError` (one line) when
    a prepared folder's files differ from what was prepared: sizes every time, the
    weights' sha256 once per process and file state."""
    model_dir = Path(model_dir)
    model_id = model_id or model_dir.name
    problem = corruption(model_dir)
    if problem is None:
        problem = _hash_problem(model_dir)
    if problem is not None:
        raise ModelUnavailableError(
            f"prepared model {model_id!r} ({model_dir}) is corrupted: {problem}; "
            f"{_fix(model_id, model_dir)}."
        )


def _hash_problem(model_dir: Path) -> str | None:
    """The first weights file whose sha256 differs from the recorded one (hashing only
    file states not verified before, in this process or in :data:`VERIFIED`)."""
    record = _record(model_dir) or {}
    try:
        verified = json.loads((model_dir / VERIFIED).read_text())
    except (OSError, ValueError):
        verified = {}
    changed = False
    for name, digest in record.get("safetensors_sha256", {}).items():
        path = model_dir / name
        stat = path.stat()
        state = [stat.st_size, stat.st_mtime_ns]
        if verified.get(name) == state:
            continue
        key = (str(path.resolve()), *state)
        if key not in _HASHED:
            _HASHED[key] = sha256_file(path)
        if _HASHED[key] != digest:
            return f"{name} does not match the sha256 recorded when it was prepared"
        verified[name], changed = state, True
    if changed:
        with contextlib.suppress(OSError):  # a read-only folder: hash again next time
            write_json(model_dir / VERIFIED, verified)
    return None


def invalidate_if_corrupted(model_dir: str | Path) -> bool:
    """Remove the marker of a prepared folder whose files fail :func:`corruption`, so
    that the workflow prepares it again; says so on stderr. True when it did."""
    model_dir = Path(model_dir)
    problem = corruption(model_dir)
    if problem is None:
        return False
    print(
        f"prepared model {model_dir.name!r} is corrupted ({problem}): preparing it again.",
        file=sys.stderr,
    )
    (model_dir / PROVENANCE).unlink(missing_ok=True)
    return True
