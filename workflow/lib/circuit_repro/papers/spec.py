"""What a paper is to the pipeline: one registered unit.

A :class:`Paper` names everything the shared parts of the workflow need to know about
a reproduced paper, so that adding a paper means adding its own files (a library
module, a rule file, scripts, a notebook, a claims file) plus one line in
:data:`circuit_repro.papers.PAPER_MODULES`:

- ``name``: the key of its config section, of ``results/<name>/`` and of
  ``workflow/rules/papers/<name>.smk``, ``workflow/scripts/<name>/`` and
  ``notebooks/<name>.ipynb``;
- ``settings``: a dataclass whose fields are the config section. Each field's
  ``metadata`` carries its description and bounds; :func:`settings_schema` derives the
  section's JSON schema from it, so the config schema, the defaults and the code can
  not drift apart;
- ``tasks``: the task data sets its rules read (checked to be enabled);
- ``figures``: figure names its notebook writes per model;
- ``presets``: overrides of its settings per named preset (``quick`` for smoke runs).

This module is torch-free: the Snakefile imports it on every run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuit_repro.paths import REPO_ROOT

#: Field metadata keys copied into the JSON schema as they are.
_SCHEMA_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "minItems",
    "uniqueItems",
)

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def setting(default: Any, description: str, config: bool = True, **schema: Any) -> Any:
    """A settings field with its description and JSON-schema bounds (``minimum`` ...).

    List defaults are copied per instance. ``config=False`` keeps the field out of the
    config section (set by the workflow, e.g. the run's seed). ``schema`` keys other
    than the ones in :data:`_SCHEMA_KEYS` (and ``items``) are an error, so a typo in a
    bound is caught at import.
    """
    unknown = set(schema) - set(_SCHEMA_KEYS) - {"items"}
    if unknown:
        raise TypeError(f"unknown schema keys {sorted(unknown)} for setting {description!r}")
    metadata = {"description": description, "config": config, **schema}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def bootstrap_samples_setting(over: str) -> Any:
    """The ``bootstrap_samples`` field every paper has (resamples ``over`` what)."""
    return setting(1000, f"Bootstrap resamples (over {over}) for every CI.", minimum=100)


def confidence_setting() -> Any:
    """The ``confidence`` field every paper has: coverage of its bootstrap CIs."""
    return setting(
        0.95,
        "Coverage of the bootstrap confidence intervals.",
        exclusiveMinimum=0.5,
        exclusiveMaximum=1,
    )


def seed_setting() -> Any:
    """The ``seed`` field every paper has, set by the workflow from the top-level seed."""
    return setting(0, "The run's seed (set from the top-level seed).", config=False)


def _json_type(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in (list, Sequence, tuple):
        (item,) = typing.get_args(annotation)[:1]
        return {"type": "array", "items": _json_type(item)}
    if origin in (dict, Mapping):
        _, value = typing.get_args(annotation)
        return {"type": "object", "additionalProperties": _json_type(value)}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"settings fields must have one type, not {annotation}")
    try:
        return {"type": _JSON_TYPES[annotation]}
    except KeyError:
        raise TypeError(f"no JSON type for settings annotation {annotation!r}") from None


def settings_schema(settings: type, description: str, enabled: bool = True) -> dict[str, Any]:
    """The JSON schema of a paper's config section, derived from its settings dataclass.

    Every field becomes a property with its type, default, description and bounds;
    ``enabled`` (run the paper's rules, default ``enabled``) is added; unknown keys are
    an error. Fields whose metadata has ``"config": False`` are not part of the section.
    """
    hints = typing.get_type_hints(settings)
    properties: dict[str, Any] = {
        "enabled": {
            "description": "Run this paper's rules (its tasks must be enabled too).",
            "type": "boolean",
            "default": enabled,
        }
    }
    for item in dataclasses.fields(settings):
        if item.metadata.get("config", True) is False:
            continue
        prop = _json_type(hints[item.name])
        prop["description"] = item.metadata.get("description", "")
        for key in _SCHEMA_KEYS:
            if key in item.metadata:
                prop[key] = item.metadata[key]
        if "items" in item.metadata:
            prop["items"] = {**prop["items"], **item.metadata["items"]}
        default = (
            item.default_factory()
            if item.default_factory is not dataclasses.MISSING
            else item.default
        )
        prop["default"] = default
        properties[item.name] = prop
    return {
        "description": description,
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": properties,
    }


def settings_from_config(settings: type, section: Mapping[str, Any], **extra: Any) -> Any:
    """An instance of ``settings`` from a (validated) config section plus ``extra``
    fields (e.g. the run's seed); keys that are not fields (``enabled``) are ignored."""
    names = {item.name for item in dataclasses.fields(settings)}
    return settings(**{k: v for k, v in section.items() if k in names}, **extra)


@dataclass(frozen=True)
class Paper:
    """One reproduced paper, as the workflow sees it (see the module docstring).

    Attributes:
        name: Short identifier (``reuse``): config section, results folder, rule file.
        title: The paper's title.
        citation: Authors, year and arXiv id or venue.
        settings: Dataclass of the config section (fields made with :func:`setting`).
        tasks: The tasks its rules need, given its config section (fixed tasks plus
            configured ones, e.g. control tasks).
        figures: Figure names the notebook writes to
            ``results/figures/<name>/<model>/<figure>.{png,pdf}``.
        presets: Settings overrides per preset name (``{"quick": {...}}``).
        claims_file: The claims file (YAML, data not code), see
            :mod:`circuit_repro.papers.claims`.
        units: The paper's result units from the whole config, when they are not the
            configured models (see :meth:`result_units`).
        enabled_by_default: Whether the default run includes it (``<name>: {enabled:
            true}`` turns on one that is off, e.g. one too long for the default run's
            time budget).
    """

    name: str
    title: str
    citation: str
    settings: type
    tasks: Callable[[Mapping[str, Any]], list[str]]
    figures: tuple[str, ...]
    claims_file: Path
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    units: Callable[[Mapping[str, Any]], list[str]] | None = None
    enabled_by_default: bool = True

    def result_units(self, config: Mapping[str, Any]) -> list[str]:
        """What the paper's results are keyed by (``results/<paper>/<unit>/``): the
        configured models, or what ``units`` returns for the whole config (e.g. the
        checkpoint series a training-dynamics paper analyses)."""
        return list(self.units(config) if self.units else config["models"])

    @property
    def rules_file(self) -> str:
        """The paper's rule file, relative to the repository root."""
        return f"workflow/rules/papers/{self.name}.smk"

    @property
    def claims_source(self) -> str:
        """The claims file as a rule input: relative to the repository root when it lies
        inside it, so a moved or copied checkout does not see a changed input set (and
        rerun every claims job)."""
        try:
            return str(Path(self.claims_file).resolve().relative_to(REPO_ROOT.resolve()))
        except ValueError:
            return str(self.claims_file)

    @property
    def notebook(self) -> str:
        return f"notebooks/{self.name}.ipynb"

    def schema(self) -> dict[str, Any]:
        """JSON schema of the paper's config section."""
        return settings_schema(
            self.settings, f"{self.title} ({self.citation}).", self.enabled_by_default
        )

    def claims_path(self, model: str) -> str:
        return f"results/{self.name}/{model}/claims.csv"

    def figure_paths(self, model: str) -> list[str]:
        return [
            f"results/figures/{self.name}/{model}/{figure}.{ext}"
            for figure in self.figures
            for ext in ("png", "pdf")
        ]

    def targets(self, model: str) -> list[str]:
        """What ``rule all`` builds for one model: the claims and every figure."""
        return [self.claims_path(model), *self.figure_paths(model)]
