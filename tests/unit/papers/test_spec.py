"""Papers as registered units: settings dataclasses give the config schema, presets
and targets; the registry drives the config checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from circuit_repro.papers import PAPERS
from circuit_repro.papers.spec import Paper, setting, settings_from_config, settings_schema
from circuit_repro.pipeline.config import ConfigError, check_config, config_schema, load_registry
from circuit_repro.pipeline.targets import all_targets, paper_claims


@dataclass
class ToySettings:
    n_prompts: int = setting(8, "Prompts.", minimum=2)
    scale: float = setting(0.5, "A scale.", exclusiveMinimum=0)
    tasks: list[str] = setting(["ioi"], "Tasks.", items={"enum": ["ioi", "facts"]})
    seed: int = setting(0, "Set by the workflow.", config=False)


def test_schema_derives_from_the_settings_dataclass():
    schema = settings_schema(ToySettings, "Toy.")
    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(properties) == {"enabled", "n_prompts", "scale", "tasks"}
    assert properties["n_prompts"] == {
        "type": "integer",
        "description": "Prompts.",
        "minimum": 2,
        "default": 8,
    }
    assert properties["tasks"]["items"] == {"type": "string", "enum": ["ioi", "facts"]}
    settings = settings_from_config(ToySettings, {"enabled": True, "n_prompts": 4}, seed=3)
    assert (settings.n_prompts, settings.seed, settings.tasks) == (4, 3, ["ioi"])


def test_a_typo_in_a_bound_is_caught_at_definition():
    with pytest.raises(TypeError, match="unknown schema keys"):
        setting(1, "x", minimun=0)


def test_every_paper_section_is_in_the_config_schema_with_its_defaults():
    schema = config_schema()
    config = check_config({}, load_registry())
    for name, paper in PAPERS.items():
        assert schema["properties"][name] == paper.schema()
        assert config[name]["enabled"] is paper.enabled_by_default
        settings_from_config(paper.settings, config[name])  # every key is a field
    assert [n for n, p in PAPERS.items() if not p.enabled_by_default] == ["circuits"]


def test_presets_apply_under_the_files_own_values():
    config = check_config({"preset": "quick", "reuse": {"n_prompts": 12}}, load_registry())
    quick = PAPERS["reuse"].presets["quick"]
    assert config["reuse"]["n_prompts"] == 12  # the file wins
    assert config["reuse"]["bootstrap_samples"] == quick["bootstrap_samples"]
    with pytest.raises(ConfigError, match="preset = 'fast' is not allowed"):
        check_config({"preset": "fast"}, load_registry())


def test_targets_loop_over_enabled_papers():
    config = check_config({"models": ["tiny-llama"]}, load_registry())
    targets = all_targets(config, ["ioi"])
    assert PAPERS["reuse"].claims_path("tiny-llama") in targets
    assert "results/claims.csv" in targets
    assert PAPERS["subspace"].claims_path("tiny-llama") in targets
    assert PAPERS["icl"].claims_path("tiny-llama") in targets
    assert PAPERS["recall"].claims_path("tiny-llama") in targets
    assert PAPERS["circuits"].claims_path("tiny-llama") not in targets  # off by default
    on = check_config({"models": ["tiny-llama"], "circuits": {"enabled": True}}, load_registry())
    assert PAPERS["circuits"].claims_path("tiny-llama") in all_targets(on, ["ioi"])
    off = check_config(
        {"models": ["tiny-llama"], **{name: {"enabled": False} for name in PAPERS}},
        load_registry(),
    )
    assert paper_claims(off) == []
    assert "results/claims.csv" not in all_targets(off, ["ioi"])


def test_paper_paths_follow_its_name():
    paper = Paper(
        name="toy",
        title="Toy",
        citation="nobody 2026",
        settings=ToySettings,
        tasks=lambda section: ["ioi"],
        figures=("curve",),
        claims_file=Path("claims.yaml"),
    )
    assert paper.rules_file == "workflow/rules/papers/toy.smk"
    assert paper.targets("m") == [
        "results/toy/m/claims.csv",
        "results/figures/toy/m/curve.png",
        "results/figures/toy/m/curve.pdf",
    ]
