"""Cluster resources per rule (circuit_repro.pipeline.resources), the slurm profile and gpu
preset. The fault injection that tests retries is tested with the rule context
(test_rule_context.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from circuit_repro.pipeline.config import REPO_ROOT, load_config, load_registry
from circuit_repro.pipeline.resources import (
    GPU_KINDS,
    KINDS,
    UNKNOWN_N_PARAMETERS,
    n_parameters,
    resource_functions,
    rule_resources,
    uses_gpu,
)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize(
    ("model_id", "low", "high"),
    [
        ("smollm2-135m", 130e6, 140e6),
        ("gemma3-270m", 260e6, 280e6),
        ("gpt2", 120e6, 130e6),
        ("gpt2-medium", 350e6, 360e6),
        ("pythia-160m", 155e6, 165e6),
        ("pythia-410m", 400e6, 420e6),
        ("qwen2.5-0.5b", 0.45e9, 0.55e9),
        ("llama-3.2-1b", 0.9e9, 1.1e9),
        ("tiny-llama", 1e5, 2e6),
    ],
)
def test_sizes_of_registry_models(registry, model_id, low, high):
    assert low <= n_parameters(registry[model_id], model_id) <= high


def test_every_registry_model_has_a_known_size(registry):
    for model_id, entry in registry.items():
        assert n_parameters(entry, model_id) != UNKNOWN_N_PARAMETERS, model_id


def test_sizes_from_numbers_entries_and_none():
    assert n_parameters(7_000_000_000) == 7_000_000_000
    assert n_parameters(None) == 0
    assert n_parameters({"source": "hf", "family": "x", "n_parameters": 42}) == 42
    assert n_parameters({"source": "hf", "family": "x", "repo": "org/mystery"}) == (
        UNKNOWN_N_PARAMETERS
    )
    with pytest.raises(ValueError):
        n_parameters(-1)
    with pytest.raises(TypeError):
        n_parameters("135M")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_positive_integer_resources(kind):
    resources = rule_resources(kind, 135_000_000)
    assert set(resources) == {"mem_mb", "runtime", "cpus_per_task", "gpu"}
    assert all(isinstance(value, int) for value in resources.values())
    assert resources["mem_mb"] >= 1024 and resources["runtime"] >= 5
    assert resources["cpus_per_task"] >= 1 and resources["gpu"] == 0  # cpu by default


@pytest.mark.parametrize("kind", KINDS)
def test_retries_ask_for_more_memory_and_time(kind):
    first, second, third = (rule_resources(kind, 1e9 // 1, attempt) for attempt in (1, 2, 3))
    for name in ("mem_mb", "runtime"):
        assert first[name] < second[name] < third[name], name
        assert second[name] >= 2 * first[name] - 256, name  # ~doubles (rounding up)
    assert first["gpu"] == second["gpu"] and first["cpus_per_task"] == second["cpus_per_task"]


@pytest.mark.parametrize("kind", ["prepare", "analysis", "training"])
def test_bigger_models_get_more_memory_and_time(kind):
    small, large = rule_resources(kind, 135_000_000), rule_resources(kind, 7_000_000_000)
    assert large["mem_mb"] > small["mem_mb"] + 7_000 * 2
    assert large["runtime"] > small["runtime"]
    assert large["cpus_per_task"] >= small["cpus_per_task"]


def test_gpus_only_for_analysis_and_training_on_cuda():
    for kind in KINDS:
        gpus = rule_resources(kind, 1_000_000_000, device="cuda")["gpu"]
        assert gpus == (1 if kind in GPU_KINDS else 0), kind
        for device in ("cpu", "auto", None):
            assert rule_resources(kind, 1_000_000_000, device=device)["gpu"] == 0
    assert {"analysis", "training"} == GPU_KINDS
    assert uses_gpu("cuda:1") and not uses_gpu("auto")


def test_models_too_big_for_one_gpu_get_several():
    assert rule_resources("analysis", 2_000_000_000, device="cuda")["gpu"] == 1
    assert rule_resources("training", 20_000_000_000, device="cuda")["gpu"] > 1
    assert rule_resources("analysis", 70_000_000_000, device="cuda")["gpu"] > 1


def test_a_tiny_model_needs_only_the_floor():
    assert rule_resources("analysis", 200_000)["mem_mb"] == 2304  # 2048 + a little, rounded


def test_bad_kind_and_attempt():
    with pytest.raises(ValueError, match="unknown rule kind 'sweep'"):
        rule_resources("sweep", 1)
    with pytest.raises(ValueError, match="attempt"):
        rule_resources("analysis", 1, attempt=0)
    with pytest.raises(ValueError, match="unknown rule kind"):
        resource_functions("sweep")


def test_resource_functions_evaluate_for_the_job_s_model(registry):
    functions = resource_functions("analysis", registry, "cuda")
    assert set(functions) == {"mem_mb", "runtime", "cpus_per_task", "gpu", "attempt"}
    wildcards = SimpleNamespace(model="smollm2-135m", task="ioi")
    expected = rule_resources("analysis", registry["smollm2-135m"], 2, device="cuda")
    for name, value in expected.items():
        assert functions[name](wildcards, 2) == value, name
    assert functions["attempt"](wildcards, 3) == 3
    # Rules without a {model} wildcard run no model.
    notebook = resource_functions("notebook")
    assert notebook["mem_mb"](SimpleNamespace(), 1) == rule_resources("notebook")["mem_mb"]


def test_gpu_preset_is_valid_and_asks_for_cuda_bfloat16():
    config = load_config(REPO_ROOT / "config/presets/gpu.yaml")
    assert config["compute"]["device"] == "cuda"
    assert config["compute"]["dtype"] == "bfloat16"


def test_slurm_profile():
    path = REPO_ROOT / "workflow/profiles/slurm/config.yaml"
    profile = yaml.safe_load(path.read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] == 2
    assert {"slurm_account", "slurm_partition"} <= set(profile["default-resources"])
    # Every entry is explained by a comment right above it (or above its block).
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        above = lines[number - 1].strip()
        opens_block = above.endswith(":") and not above.startswith("#")
        assert above.startswith("#") or (opens_block and line.startswith("  ")), line
