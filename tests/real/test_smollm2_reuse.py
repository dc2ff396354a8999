"""Circuit reuse on the real default model: path patching matches a plain loop, and the
IOI heads that matter most attend where the IOI circuit says they should."""

from __future__ import annotations

import pytest

from circuit_repro.engine.hooks import Component
from circuit_repro.engine.patching import runs_from_records
from circuit_repro.engine.path_patching import naive_path_patching, path_patching
from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.circuit import attention_scores, find_circuit, stage_effects
from circuit_repro.tasks import generate_task


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_bridge(smollm2_dir)


@pytest.fixture(scope="module")
def ioi_records(smollm2):
    return generate_task("ioi", smollm2.tokenizer, {"n_prompts": 8}, seed=0)


def test_stage_one_top_heads_attend_to_names(smollm2, ioi_records):
    """Stage 1 (into the final residual stream): the heads with the largest effects are
    name movers: from the final token they attend to the indirect object."""
    table = find_circuit(smollm2, ioi_records, "ioi", ReuseSettings(stages=1), progress=False)
    effects = stage_effects(table)
    attention = attention_scores(smollm2, ioi_records, "ioi").set_index(["layer", "head"])
    top = effects.reindex(effects["effect"].abs().sort_values(ascending=False).index).head(3)
    scores = [attention.loc[(r.layer, r.head), "end_to_answer"] for r in top.itertuples()]
    assert max(scores) > 0.3, (top, scores)
    assert effects["effect"].abs().max() > 0.2


def test_path_patching_into_receivers_is_consistent_across_batches(smollm2, ioi_records):
    """The per-prompt values do not depend on which prompts share a pass."""
    runs, metric = runs_from_records(
        smollm2.tokenizer, ioi_records, "flipped", direction="corrupt -> clean"
    )
    senders = [Component("head", layer, head) for layer in (18, 20) for head in range(9)]
    receivers = [Component("q", 23, 0), Component("k", 23, 0), Component("v", 24, 1)]
    large = path_patching(
        smollm2, runs, senders, receivers, metric, progress=False, per_prompt=True
    )
    small = path_patching(
        smollm2, runs, senders, receivers, metric, token_budget=64, progress=False, per_prompt=True
    )
    assert (large["value"] - small["value"]).abs().max() < 1e-4


def test_path_patching_equals_the_hand_frozen_loop_on_smollm2(smollm2, ioi_records):
    """Both stages of the reuse analysis on the real model: path patching (suffix rows,
    prefix cache, stacked senders) equals full-sequence passes that freeze every head by
    hand, for a seeded sample of senders, into the final residual stream (stage 1) and
    into the q/k/v of later heads (stages 2 and 3, grouped-query K/V heads included), at
    every position and at the final position only (the authors' mode)."""
    import numpy as np

    runs, metric = runs_from_records(
        smollm2.tokenizer, ioi_records[:4], "flipped", direction="corrupt -> clean"
    )
    rng = np.random.default_rng(0)
    n_layers, n_heads = smollm2.n_layers, smollm2.n_heads
    layers = rng.choice(np.arange(n_layers - 8), size=3, replace=False)
    senders = [Component("head", int(layer), int(rng.integers(n_heads))) for layer in layers]
    senders.append(Component("head", 20, 0))  # an S-inhibition head: a large stage-2 effect
    receiver_sets = {
        "final residual stream": None,
        "q/k/v of later heads": [
            Component("q", 23, 0),
            Component("k", 23, 0),
            Component("v", n_layers - 6, int(rng.integers(smollm2.n_kv_heads))),
        ],
    }
    for positions in ("all", "read"):
        for label, receivers in receiver_sets.items():
            fast = path_patching(
                smollm2, runs, senders, receivers, metric, progress=False, positions=positions
            )
            assert np.ptp(fast["value"]) > 1e-2, (label, fast["value"])  # not vacuous
            for sender, value in zip(senders, fast["value"], strict=True):
                expected = naive_path_patching(smollm2, runs, sender, receivers, metric, positions)
                assert abs(value - expected) < 1e-4, (positions, label, sender, value, expected)
