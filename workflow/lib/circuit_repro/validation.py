"""JSON-schema validation with one-line messages, for the config and the model registry.

Defaults declared in a schema are filled in, unknown keys are rejected, and every
problem is reported as one line that names the field and what is allowed, so that a
typo never surfaces as a traceback from deep inside a rule. Torch-free.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
import yaml

from circuit_repro.errors import UserFacingError
from circuit_repro.paths import SCHEMA_DIR


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


def validate(instance: dict[str, Any], schema: str | dict[str, Any], what: str) -> dict[str, Any]:
    """Validate ``instance`` in place, filling schema defaults.

    Args:
        instance: Parsed YAML (modified: defaults are added).
        schema: A schema, or the name of one in ``workflow/schemas`` (``models``).
        what: How to name the document in messages (e.g. ``config``).

    Returns:
        The same dict, with defaults filled.

    Raises:
        ConfigError: one line naming the offending field and what is allowed.
    """
    schema = load_schema(schema) if isinstance(schema, str) else schema
    validator = _validator_filling_defaults(schema)
    # Defaults are filled while validating; a second pass checks the filled document.
    for _ in range(2):
        error = _first_error(validator, instance)
        if error is not None:
            raise ConfigError(_describe(error, what))
    return instance
