"""Load and validate the run configuration and the model registry.

Both are YAML files checked against JSON schemas in ``workflow/schemas``. Defaults
declared in the schema are filled in, unknown keys are rejected, and every problem is
reported as one line that names the field and what is allowed, so that a typo never
surfaces as a traceback from deep inside a rule.

This module must stay light (no torch import): the Snakefile imports it on every run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from circuit_repro.errors import UserFacingError

REPO_ROOT = Path(__file__).resolve().parents[4]
SCHEMA_DIR = REPO_ROOT / "workflow" / "schemas"
DEFAULT_REGISTRY = REPO_ROOT / "config" / "models.yaml"


class ConfigError(UserFacingError, ValueError):
    """A configuration or registry problem, phrased as one line for the user."""


def _validator_filling_defaults(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator that also writes each property's schema default."""
    base = jsonschema.Draft202012Validator

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    extended = jsonschema.validators.extend(base, {"properties": fill_defaults})
    return extended(schema)


def _field_name(path: Iterable[Any]) -> str:
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(top level)"


def _describe(error: jsonschema.ValidationError, what: str) -> str:
    """Turn a jsonschema error into one line naming the field and what is allowed."""
    field = _field_name(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = "" if field == "(top level)" else f" under {field}"
        return (
            f"{what}: unknown key {', '.join(map(repr, unknown))}{where}; "
            f"allowed keys: {', '.join(allowed) or '(none)'}"
        )
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{what}: {field} = {error.instance!r} has the wrong type; expected {expected}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{what}: {field} = {error.instance!r} is not allowed; choose one of: {allowed}"
    if error.validator == "required":
        return f"{what}: {field} is missing a required key: {error.message}"
    return f"{what}: {field}: {error.message}"


def _first_error(validator, instance) -> jsonschema.ValidationError | None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    # Prefer the most specific error (inside an if/then, the branch that failed).
    return jsonschema.exceptions.best_match(errors)


def load_schema(name: str) -> dict[str, Any]:
    """Read ``workflow/schemas/<name>.schema.yaml``."""
    with open(SCHEMA_DIR / f"{name}.schema.yaml") as handle:
        return yaml.safe_load(handle)


def validate(instance: dict[str, Any], schema_name: str, what: str) -> dict[str, Any]:
    """Validate ``instance`` in place, filling schema defaults.

    Args:
        instance: Parsed YAML (modified: defaults are added).
        schema_name: ``config`` or ``models``.
        what: How to name the document in messages (e.g. ``config``).

    Returns:
        The same dict, with defaults filled.

    Raises:
        ConfigError: one line naming the offending field and what is allowed.
    """
    validator = _validator_filling_defaults(load_schema(schema_name))
    # Defaults are filled while validating; a second pass checks the filled document.
    for _ in range(2):
        error = _first_error(validator, instance)
        if error is not None:
            raise ConfigError(_describe(error, what))
    return instance


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
    validate(config, "config", "config")
    for index, model_id in enumerate(config["models"]):
        if model_id not in registry:
            known = ", ".join(sorted(registry))
            raise ConfigError(
                f"config: models[{index}] = {model_id!r} is not in config/models.yaml; "
                f"known ids: {known} (add an entry there to use a new model)"
            )
    _check_paper_tasks(config)
    return config


# Tasks each paper's rules read, beyond those named in its own section.
PAPER_TASKS: dict[str, tuple[str, ...]] = {"reuse": ("ioi", "colored_objects")}


def paper_tasks(config: Mapping[str, Any], paper: str) -> list[str]:
    """Tasks a paper's rules need (its fixed tasks, then its configured controls)."""
    return list(PAPER_TASKS[paper]) + list(config[paper].get("controls", []))


def _check_paper_tasks(config: Mapping[str, Any]) -> None:
    for paper in PAPER_TASKS:
        if not config[paper]["enabled"]:
            continue
        for task in paper_tasks(config, paper):
            if not config["tasks"][task]["enabled"]:
                raise ConfigError(
                    f"config: {paper} needs task {task!r}, which is disabled "
                    f"(tasks.{task}.enabled: false); enable it, or set {paper}.enabled: false"
                )


def enabled_tasks(config: Mapping[str, Any]) -> list[str]:
    """Names of the tasks that are enabled and have a generator, sorted."""
    from circuit_repro.tasks import GENERATORS

    return sorted(
        name
        for name, settings in config["tasks"].items()
        if settings.get("enabled", True) and name in GENERATORS
    )


def load_config(path: str | Path, registry_path: str | Path = DEFAULT_REGISTRY) -> dict[str, Any]:
    """Read, validate and return a configuration file (for notebooks and tests)."""
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    return check_config(config, load_registry(registry_path))
