"""Patching on the real default model (grouped-query attention: 9 query, 3 K/V heads)."""

from __future__ import annotations

import pytest
import torch

from circuit_repro.engine.hooks import Component, all_components
from circuit_repro.engine.patching import (
    add_normalized_effect,
    naive_patching_sweep,
    patching_sweep,
    prompt_metric,
    run_metric,
    runs_from_records,
)
from circuit_repro.models.load import load_bridge
from circuit_repro.tasks import generate_task


@pytest.fixture(scope="module")
def smollm2_ioi(smollm2_dir):
    loaded = load_bridge(smollm2_dir)
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": 4}, seed=0)
    runs, metric = runs_from_records(loaded.tokenizer, records)
    return loaded, runs, metric


def test_fast_sweep_equals_naive_on_smollm2(smollm2_ioi):
    loaded, runs, metric = smollm2_ioi
    components = (
        [c for c in all_components(loaded.bridge, "head") if c.layer in (3, 21)]
        + [Component("k", 21, 2), Component("v", 0, 1)]
        + [Component("resid_pre", layer, None, 6) for layer in (0, 14, 29)]
        + [Component("mlp_out", 27)]
    )
    fast = patching_sweep(loaded, runs, components, metric, progress=False)
    naive = naive_patching_sweep(loaded, runs, components, metric)
    assert (fast["value"] - naive["value"]).abs().max() < 1e-4


def test_clean_residual_restores_clean_behaviour(smollm2_ioi):
    loaded, runs, metric = smollm2_ioi
    corrupt = run_metric(loaded, runs.base_tokens, runs, metric)
    clean = run_metric(loaded, runs.source_tokens, runs, metric)
    assert clean > 2 and corrupt < -2  # IOI works, and flipping S2 flips the answer
    components = [Component("resid_pre", layer) for layer in (0, 15, 29)]
    table = add_normalized_effect(
        patching_sweep(loaded, runs, components, metric, progress=False), corrupt, clean
    )
    torch.testing.assert_close(
        torch.tensor(table["normalized_effect"].to_numpy()),
        torch.ones(3, dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )


def test_by_position_sweep_skips_the_shared_prefix_exactly_on_smollm2(smollm2_ioi):
    """IOI's clean and corrupted prompts agree up to the second mention of the subject:
    every patch there is skipped, and its row is the unpatched base run's value bitwise
    (the naive loop, which runs the no-op patch through a hook, agrees to float32
    rounding: a hook's copy of the activation can change the kernels' summation order);
    later positions run."""
    from circuit_repro.engine.patching import shared_prefix_length

    loaded, runs, metric = smollm2_ioi
    shared = shared_prefix_length(runs)
    positions = [0, shared - 1, shared, runs.base_tokens.shape[1] - 1]
    components = [
        Component("head", layer, head, position)
        for layer, head in ((0, 0), (14, 4), (29, 8))
        for position in positions
    ] + [Component("resid_pre", 20, None, position) for position in positions]
    fast = patching_sweep(loaded, runs, components, metric, progress=False)
    naive = naive_patching_sweep(loaded, runs, components, metric)
    before = fast["position"] < shared
    assert fast["skipped"][before].all() and not fast["skipped"][~before].any()
    with torch.no_grad():
        base = prompt_metric(loaded, runs.base_tokens, runs, metric).double().mean().item()
    assert (fast["value"][before] == base).all()
    assert (fast["value"][before] - naive["value"][before]).abs().max() < 1e-6 * abs(base)
    assert (fast["value"] - naive["value"]).abs().max() < 1e-4
