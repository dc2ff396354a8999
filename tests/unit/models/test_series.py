"""Checkpoint series in the model registry (circuit_repro.models.registry): members
with ids <series>@<checkpoint>, the config's series ids expanded, and what a trained
series needs."""

from __future__ import annotations

import pytest
import yaml

from circuit_repro.models.registry import (
    expand_models,
    expand_series,
    load_registry,
    member_id,
    series_members,
)
from circuit_repro.pipeline.config import check_config, load_config
from circuit_repro.validation import ConfigError

REGISTRY = {
    "pythia": {"source": "hf", "family": "gpt_neox", "repo": "EleutherAI/pythia-160m",
               "series": {"checkpoints": ["step0", "step1000"]}},
    "stand-in": {"source": "random", "family": "llama", "seed": 5,
                 "architecture": {"n_layers": 2}, "series": {"checkpoints": ["a", "b"]}},
    "trained": {"source": "trained", "family": "llama", "architecture": {"n_layers": 2},
                "training": {"recipe": "induction", "steps": 10},
                "series": {"checkpoints": [0, 5, 10]}},
    "plain": {"source": "random", "family": "llama", "architecture": {"n_layers": 2}},
}  # fmt: skip


def test_members_carry_what_makes_them_their_checkpoint():
    expanded = expand_series(REGISTRY)
    assert expanded["pythia@step1000"]["revision"] == "step1000"
    assert [expanded[f"stand-in@{c}"]["seed"] for c in "ab"] == [5, 6]
    assert expanded["trained@step5"]["step"] == 5
    assert member_id("trained", REGISTRY["trained"], 10) == "trained@step10"
    assert series_members(expanded, "trained") == [
        "trained@step0",
        "trained@step5",
        "trained@step10",
    ]
    assert all(expanded[m]["series"] == "trained" for m in series_members(expanded, "trained"))
    assert "series" not in expanded["plain"]


def test_a_series_id_in_the_config_stands_for_its_checkpoints():
    expanded = expand_series(REGISTRY)
    assert expand_models(["plain", "pythia"], expanded) == [
        "plain",
        "pythia@step0",
        "pythia@step1000",
    ]


def test_config_models_expand_through_check_config():
    registry = load_registry()
    config = load_config("config/presets/quick.yaml")
    config["models"] = ["tiny-llama-series"]
    check_config(config, registry)
    assert config["models"] == series_members(registry, "tiny-llama-series")
    assert len(config["models"]) == 3


def test_a_fine_tuned_series_needs_a_registered_base(tmp_path):
    document = {"models": {"sft": {"source": "trained", "family": "llama", "base": "nope",
                                   "training": {"recipe": "mc_categories", "steps": 3},
                                   "series": {"checkpoints": [0, 3]}}}}  # fmt: skip
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="fine-tunes 'nope', which is not in the registry"):
        load_registry(path)
    del document["models"]["sft"]["series"]
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="series"):
        load_registry(path)


def test_the_shipped_series_are_valid():
    registry = load_registry()
    for series in ("tiny-induction", "smollm2-135m-sft", "tiny-llama-series"):
        members = series_members(registry, series)
        assert len(members) >= 3
        assert members[0].endswith(("@step0", "@rev0"))
