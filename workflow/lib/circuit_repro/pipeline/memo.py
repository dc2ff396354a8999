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

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any


def fingerprint(
    files: list[str | Path] = (), modules: list[str] = (), **values: Any
) -> str:  # fmt: skip
    """A sha256 over the bytes of ``files``, the source files of ``modules`` (found
    without importing them) and the JSON of ``values``."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).read_bytes())
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"no source for module {module!r}")
        digest.update(Path(spec.origin).read_bytes())
    digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class Memo:
    """Text files memoized in ``folder``, one per item: ``<item>.<key><suffix>``.

    Stored as text (e.g. a CSV) and handed back byte for byte, so that an output built
    from a memoized entry is identical to one computed afresh.
    """

    def __init__(self, folder: str | Path, suffix: str = ".csv"):
        self.folder, self.suffix = Path(folder), suffix

    def _path(self, item: str, key: str) -> Path:
        return self.folder / f"{item}.{key[:20]}{self.suffix}"

    def get(self, item: str, key: str) -> str | None:
        """The text stored for ``item`` under ``key``, or None."""
        path = self._path(item, key)
        return path.read_text() if path.exists() else None

    def put(self, item: str, key: str, text: str) -> None:
        """Store ``text`` for ``item`` under ``key`` (atomically), dropping the item's
        entries under other keys."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(item, key)
        for stale in self.folder.glob(f"{item}.*{self.suffix}"):
            if stale != path:
                stale.unlink(missing_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        os.replace(partial, path)
