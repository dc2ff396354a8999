"""The model registry (config/models.yaml): every model id, its source and checksums."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from circuit_repro.paths import DEFAULT_REGISTRY
from circuit_repro.validation import ConfigError, validate


def load_registry(path: str | Path = DEFAULT_REGISTRY) -> dict[str, dict[str, Any]]:
    """Read and validate the model registry; returns ``{model_id: entry}``."""
    path = Path(path)
    try:
        with open(path) as handle:
            document = yaml.safe_load(handle) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"model registry {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"model registry {path} is not valid YAML: {err}") from err
    validate(document, "models", f"model registry {path.name}")
    return document["models"]
