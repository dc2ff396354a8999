"""Where the repository's own files are (the library runs from a checkout)."""

from pathlib import Path

#: The repository root (``workflow/lib/circuit_repro/paths.py`` is three folders down).
REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = REPO_ROOT / "workflow" / "schemas"
DEFAULT_REGISTRY = REPO_ROOT / "config" / "models.yaml"
