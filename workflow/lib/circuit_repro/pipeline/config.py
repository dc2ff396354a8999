"""Load and validate the run configuration and the model registry.

Both are YAML files checked against JSON schemas in ``workflow/schemas``. Defaults
declared in the schema are filled in, unknown keys are rejected, and every problem is
reported as one line that names the field and what is allowed, so that a typo never
surfaces as a traceback from deep inside a rule.

This module must stay light (no torch import): the Snakefile imports it on every run.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from circuit_repro.models.registry import expand_models, load_registry
from circuit_repro.paths import DEFAULT_REGISTRY, REPO_ROOT
from circuit_repro.validation import ConfigError, load_schema, validate

__all__ = [
    "REPO_ROOT",
    "ConfigError",
    "check_config",
    "config_schema",
    "enabled_papers",
    "enabled_tasks",
    "load_config",
    "load_registry",
    "load_schema",
    "paper_tasks",
    "validate",
]


def config_schema() -> dict[str, Any]:
    """The run configuration's schema: ``config.schema.yaml`` plus one section per
    registered paper, derived from its settings dataclass."""
    from circuit_repro.papers import PAPERS

    schema = load_schema("config")
    for name, paper in PAPERS.items():
        schema["properties"][name] = paper.schema()
    return schema


def _known_ids(model_id: str, registry: Mapping[str, Any]) -> str:
    """The closest registry ids to a mistyped ``model_id``, then every id that is not a
    member of a series (members are ``<series>@<revision>``; the series are listed)."""
    close = difflib.get_close_matches(model_id, list(registry), n=3, cutoff=0.6)
    known = ", ".join(sorted(m for m in registry if "@" not in m))
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return f"{hint}known ids: {known}"


def check_config(
    config: dict[str, Any], registry: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Validate a run configuration and check that every model id is registered.

    Args:
        config: The run configuration (modified in place: defaults filled).
        registry: Output of :func:`load_registry`.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: one line naming the field or model id and what is allowed.
    """
    _apply_preset(config)
    validate(config, config_schema(), "config")
    for index, model_id in enumerate(config["models"]):
        if model_id not in registry:
            raise ConfigError(
                f"config: models[{index}] = {model_id!r} is not in config/models.yaml; "
                f"{_known_ids(model_id, registry)} (add an entry there to use a new model)"
            )
    # A series id stands for its checkpoints: every rule runs on each of them.
    config["models"] = expand_models(config["models"], registry)
    _check_paper_tasks(config)
    return config


def _apply_preset(config: dict[str, Any]) -> None:
    """Put each paper's settings for ``config["preset"]`` under the config's own."""
    from circuit_repro.papers import PAPERS

    preset = config.get("preset", "default")
    known = {"default"} | {name for paper in PAPERS.values() for name in paper.presets}
    if preset not in known:
        raise ConfigError(
            f"config: preset = {preset!r} is not allowed; choose one of: {', '.join(sorted(known))}"
        )
    for name, paper in PAPERS.items():
        overrides = paper.presets.get(preset, {})
        if overrides and isinstance(config.get(name, {}), dict):
            config[name] = {**overrides, **config.get(name, {})}


def enabled_papers(config: Mapping[str, Any]) -> list[str]:
    """Names of the registered papers whose section is enabled, in registry order."""
    from circuit_repro.papers import PAPERS

    return [name for name in PAPERS if config[name]["enabled"]]


def paper_tasks(config: Mapping[str, Any], paper: str) -> list[str]:
    """Tasks a paper's rules need, given its config section."""
    from circuit_repro.papers import PAPERS

    return PAPERS[paper].tasks(config[paper])


def _check_paper_tasks(config: Mapping[str, Any]) -> None:
    for paper in enabled_papers(config):
        for task in paper_tasks(config, paper):
            if not config["tasks"][task]["enabled"]:
                raise ConfigError(
                    f"config: {paper} needs task {task!r}, which is disabled "
                    f"(tasks.{task}.enabled: false); enable it, or set {paper}.enabled: false"
                )


def enabled_tasks(config: Mapping[str, Any]) -> list[str]:
    """Names of the tasks that are enabled and have a generator, sorted."""
    from circuit_repro.tasks import TASK_NAMES

    return sorted(
        name
        for name, settings in config["tasks"].items()
        if settings.get("enabled", True) and name in TASK_NAMES
    )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds.

    Raises:
        ConfigError: one line with the file, line and column of a syntax error (what
            Snakemake's own loader leaves out), or saying the file is not a mapping.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = error.problem or error.context or "invalid syntax"
        raise ConfigError(
            f"{where}: not valid YAML ({problem}); check the indentation (spaces, no tabs) "
            "and the brackets and colons there"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(
            f"{path}: a config file holds keys and values, not {type(document).__name__}"
        )
    return document


def load_config(path: str | Path, registry_path: str | Path = DEFAULT_REGISTRY) -> dict[str, Any]:
    """Read, validate and return a configuration file (for notebooks and tests)."""
    return check_config(read_config_file(path), load_registry(registry_path))


def default_paper_sections() -> str:
    """Every registered paper's config section with its defaults, as commented YAML."""
    from circuit_repro.papers import PAPERS

    lines = []
    for name, paper in PAPERS.items():
        lines.append(f"# {paper.title} ({paper.citation})")
        lines.append(f"{name}:")
        for key, prop in paper.schema()["properties"].items():
            value = yaml.safe_dump(prop["default"], default_flow_style=True).strip()
            value = value.removesuffix("...").strip()
            lines.append(f"  {key}: {value}  # {prop['description']}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(default_paper_sections())
