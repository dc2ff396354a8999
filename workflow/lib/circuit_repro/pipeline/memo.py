"""Per-item results kept across jobs, keyed by the content of everything that made them.

Snakemake caches per job: a job whose input, parameters or code changed reruns whole. A
job that handles many items at once (the ``baseline`` rule scores every task of a
model in one process, so that the model is loaded once) would then recompute every
item when one changed. A :class:`Memo` keeps each item's result under a key made from
the item's own inputs (file contents, settings, the source of the code that computes
it, see :func:`fingerprint`), so the job recomputes only the items whose key changed
and reads the others back. The memo lives beside the outputs, in a hidden folder; a
stale entry is never read (its key no longer matches) and is replaced on the next write.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any


def fingerprint(files: list[str | Path] = (), **values: Any) -> str:
    """A sha256 over the bytes of ``files``, the code (:func:`code_fingerprint`) and the
    JSON of ``values``."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).read_bytes())
    digest.update(code_fingerprint().encode())
    digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """A sha256 over every file of the ``circuit_repro`` package and the versions of
    the libraries that compute with it. Any change to the library invalidates every
    memo entry: coarse, but an entry can never outlive the code that made it (Snakemake
    itself reruns a job for a changed script, not for a changed library)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    for library in ("torch", "transformers", "transformer-lens", "numpy", "pandas"):
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    return digest.hexdigest()


class Memo:
    """Text files memoized in ``folder``: the entry of file ``name`` (``ioi.csv``) under
    key ``k`` is ``<folder>/ioi.<k[:20]>.csv``, one entry per name.

    Stored as text and handed back byte for byte, so that an output written from a
    memoized entry is identical to one computed afresh.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, name: str, key: str) -> Path:
        stem, suffix = Path(name).stem, Path(name).suffix
        return self.folder / f"{stem}.{key[:20]}{suffix}"

    def get(self, name: str, key: str) -> str | None:
        """The text stored for ``name`` under ``key``, or None."""
        path = self._path(name, key)
        return path.read_text() if path.exists() else None

    def get_all(self, names: list[str], key: str) -> dict[str, str] | None:
        """The texts of every name under ``key``, or None unless all are there."""
        texts = {name: self.get(name, key) for name in names}
        return None if any(text is None for text in texts.values()) else texts

    def put(self, name: str, key: str, text: str) -> None:
        """Store ``text`` for ``name`` under ``key`` (atomically), dropping the name's
        entries under other keys."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(name, key)
        stem, suffix = Path(name).stem, Path(name).suffix
        for stale in self.folder.glob(f"{stem}.*{suffix}"):
            if stale != path and stale.name.count(".") == path.name.count("."):
                stale.unlink(missing_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        os.replace(partial, path)
