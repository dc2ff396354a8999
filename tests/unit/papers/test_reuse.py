"""Circuit component reuse (Merullo et al. 2023): circuits, classes, overlap, intervention,
claims, on tiny random models and synthetic tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_repro.engine.behaviour import score_records
from circuit_repro.engine.circuits import overlap
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import override_attention_rows
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.papers.claims import CLAIM_COLUMNS, VERDICTS
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.circuit import (
    circuit_and_classes,
    classify_heads,
    heads_per_stage,
    select_circuit,
    stage_effects,
)
from circuit_repro.papers.reuse.claims import reuse_claims
from circuit_repro.papers.reuse.intervention import intervene, prepare_intervention
from circuit_repro.papers.reuse.overlap import bootstrap_overlap, overlap_table
from circuit_repro.tasks import generate_task

SETTINGS = ReuseSettings(n_prompts=6, top_fraction=0.2, bootstrap_samples=100)


@pytest.fixture(scope="module")
def tiny():
    return load_bridge(ensure_prepared("tiny-llama"))


@pytest.fixture(scope="module")
def circuits(tiny):
    results = {}
    for task in ("ioi", "colored_objects", "facts"):
        records = generate_task(task, tiny.tokenizer, {"n_prompts": 8}, seed=0)
        results[task] = (records, *circuit_and_classes(tiny, records, task, SETTINGS, False))
    return results


def test_heads_per_stage_rounds_up_and_keeps_one():
    assert heads_per_stage(270, 0.02) == 6
    assert heads_per_stage(72, 0.02) == 2
    assert heads_per_stage(10, 0.001) == 1


def test_circuit_tables_cover_every_head_stage_and_prompt(tiny, circuits):
    cfg = tiny.bridge.cfg
    for _, table, heads in circuits.values():
        stage_one = table[table["stage"] == 1]
        assert len(stage_one) == cfg.n_layers * cfg.n_heads * SETTINGS.n_prompts
        # Stage 2 senders are exactly the heads before the last receiver layer.
        stage_two = table[table["stage"] == 2]
        if len(stage_two):
            receiver_layers = re.findall(r"L(\d+)\.", stage_two["receivers"].iloc[0])
            last = max(int(layer) for layer in receiver_layers)
            assert set(stage_two["layer"]) == set(range(last))
        assert len(heads) == cfg.n_layers * cfg.n_heads
        in_circuit = heads["in_circuit"].sum()
        k = heads_per_stage(len(heads), SETTINGS.top_fraction)
        assert k <= in_circuit <= SETTINGS.stages * k
        assert set(heads["class"]) <= {
            "mover",
            "negative mover",
            "inhibition",
            "duplicate-token",
            "induction",
            "other",
        }


def test_stage_effects_are_the_normalized_mean_and_reweight_under_resampling():
    rows = []
    for prompt, (patched, clean, corrupt) in enumerate([(1.0, 3.0, -1.0), (2.0, 4.0, 0.0)]):
        rows.append(
            {
                "stage": 1,
                "layer": 0,
                "head": 0,
                "prompt": prompt,
                "patched_ld": patched,
                "clean_ld": clean,
                "corrupt_ld": corrupt,
            }
        )
    table = pd.DataFrame(rows)
    effect = stage_effects(table)["effect"].item()
    assert effect == pytest.approx((1.5 - 3.5) / (-0.5 - 3.5))
    resampled = stage_effects(table, np.array([1, 1]))["effect"].item()
    assert resampled == pytest.approx((2.0 - 4.0) / (0.0 - 4.0))


def test_select_circuit_takes_top_heads_by_absolute_effect_per_stage():
    effects = pd.DataFrame(
        {
            "stage": [1, 1, 1, 2, 2, 2],
            "layer": [0, 1, 2, 0, 0, 1],
            "head": [0, 0, 0, 1, 2, 1],
            "effect": [0.1, -0.9, 0.5, 0.3, 0.05, -0.2],
        }
    )
    assert select_circuit(effects, n_heads_total=10, top_fraction=0.1) == {(1, 0), (0, 1)}
    assert select_circuit(effects, n_heads_total=10, top_fraction=0.2) == {
        (1, 0),
        (2, 0),
        (0, 1),
        (1, 1),
    }


def test_classify_heads_by_largest_role_and_effect_sign():
    attention = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 2],
            "head": [0, 1, 0, 1, 0],
            "end_to_answer": [0.8, 0.7, 0.1, 0.05, 0.1],
            "end_to_repeated": [0.1, 0.1, 0.6, 0.05, 0.1],
            "repeated_to_first": [0.0, 0.0, 0.1, 0.5, 0.1],
            "repeated_to_after_first": [0.0, 0.0, 0.0, 0.45, 0.2],
        }
    )
    effects = pd.DataFrame(
        {
            "stage": 1,
            "layer": [0, 0, 1, 1, 2],
            "head": [0, 1, 0, 1, 0],
            "effect": [0.4, -0.3, 0.0, 0.0, 0.0],
        }
    )
    classes = classify_heads(effects, attention, threshold=0.3)
    assert list(classes["class"]) == [
        "mover",
        "negative mover",
        "inhibition",
        "duplicate-token",
        "other",
    ]


def test_overlap_of_a_circuit_with_itself_is_one(circuits):
    _, table, heads = circuits["ioi"]
    assert overlap({(0, 1), (1, 2)}, {(1, 2), (3, 0)}) == (1 / 3, 1, 3)
    assert overlap(set(), set()) == (0.0, 0, 0)
    settings = ReuseSettings(n_prompts=6, top_fraction=0.2, bootstrap_samples=50)
    same = bootstrap_overlap(table, table, len(heads), settings, heads)
    full = same[same["class"] == "all"].iloc[0]
    assert full["overlap"] == 1.0
    assert full["ci_low"] <= 1.0 <= full["ci_high"]


def test_overlap_table_compares_the_reference_with_every_other_task(circuits):
    tables = {task: table for task, (_, table, _) in circuits.items()}
    overlap = overlap_table(tables, circuits["ioi"][2], SETTINGS)
    assert set(overlap["pair"]) == {"ioi|colored_objects", "ioi|facts"}
    overall = overlap[overlap["class"] == "all"]
    assert overall["overlap"].between(0, 1).all()
    assert (overall["ci_low"] <= overall["overlap"] + 1e-12).all()
    assert (overall["overlap"] <= overall["ci_high"] + 1e-12).all()
    assert (overall["shared"] <= overall["union"]).all()


def test_intervention_without_heads_is_the_plain_model(tiny, circuits):
    """The suffix run with cached keys and values scores like an ordinary forward."""
    records = circuits["colored_objects"][0]
    runs = prepare_intervention(tiny, records, "colored_objects")
    assert runs.start > 0 and runs.prefix is not None
    plain = intervene(tiny, runs, [])
    scores = score_records(tiny.hf_model, tiny.tokenizer, records)
    assert list(plain["correct"]) == list(scores["candidate_correct"])
    np.testing.assert_allclose(plain["logit_diff"], scores["logit_diff"], atol=1e-4)


def test_intervention_sets_the_final_attention_row(tiny, circuits):
    """The override puts the heads' final-token attention on the wrong colours only, and
    equals the same override on a full run."""
    records = circuits["colored_objects"][0]
    runs = prepare_intervention(tiny, records, "colored_objects")
    heads = [(0, 0), (1, 1)]
    seen = {}

    def record(pattern, hook):
        seen[hook.layer()] = pattern.detach().clone()

    query = runs.end - runs.start
    with (
        override_attention_rows(tiny.bridge, 0, [0], query, runs.key_weights),
        tiny.bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", record)]),
    ):
        cache = runs.prefix.prefix(runs.start, 1)
        logits_at(tiny, runs.tokens[:, runs.start :], query, None, cache)
    rows = torch.arange(len(records))
    row = seen[0][rows, 0, query]  # [prompts, keys]: head 0 at the final position
    torch.testing.assert_close(row, runs.key_weights[:, : row.shape[1]])
    untouched = seen[0][rows, 1, query]
    assert not torch.allclose(untouched, runs.key_weights[:, : row.shape[1]])
    fast = intervene(tiny, runs, heads)
    for record_, weights in zip(records, runs.key_weights, strict=True):
        query = record_.fields["query_index"]
        wrong = [record_.roles.position(f"COLOR_{k}") for k in range(3) if k != query]
        assert torch.nonzero(weights).flatten().tolist() == sorted(wrong)
    full = runs.__class__(**{**runs.__dict__, "start": 0, "prefix": None})
    np.testing.assert_allclose(
        intervene(tiny, full, heads)["logit_diff"], fast["logit_diff"], atol=1e-4
    )


def _overlap_rows(main, controls):
    rows = [
        {
            "pair": "ioi|colored_objects",
            "class": "all",
            "overlap": main[0],
            "ci_low": main[1],
            "ci_high": main[2],
            "shared": 7,
            "union": 10,
            "n_prompts": 16,
        }
    ]
    for task, (value, low, high) in controls.items():
        rows.append(
            {
                "pair": f"ioi|{task}",
                "class": "all",
                "overlap": value,
                "ci_low": low,
                "ci_high": high,
                "shared": 1,
                "union": 10,
                "n_prompts": 16,
            }
        )
    return pd.DataFrame(rows)


def _intervention_rows(before, after, change_low, n_heads=2):
    rows = [
        {
            "group": "none",
            "heads": "",
            "n_heads": 0,
            "n_prompts": 100,
            "accuracy": before,
            "accuracy_ci_low": before - 0.05,
            "accuracy_ci_high": before + 0.05,
            "change_ci_low": 0.0,
            "change_ci_high": 0.0,
        }
    ]
    for group in ("inhibition", "negative mover", "all"):
        rows.append(
            {
                "group": group,
                "heads": "L1H1" if n_heads else "",
                "n_heads": n_heads,
                "n_prompts": 100,
                "accuracy": after,
                "accuracy_ci_low": after - 0.05,
                "accuracy_ci_high": after + 0.05,
                "change_ci_low": change_low,
                "change_ci_high": change_low + 0.2,
            }
        )
    return pd.DataFrame(rows)


def _baselines(near_chance=()):
    return {
        task: {
            "task": task,
            "accuracy": 0.4 if task in near_chance else 0.95,
            "accuracy_ci_low": 0.3 if task in near_chance else 0.9,
            "chance": 0.33,
            "near_chance": task in near_chance,
        }
        for task in ("ioi", "colored_objects", "greater_than", "facts")
    }


def test_claims_are_measured_and_judged_by_the_shared_policy():
    claims = reuse_claims(
        "m",
        _overlap_rows(
            (0.78, 0.7, 0.85), {"greater_than": (0.1, 0.05, 0.2), "facts": (0.25, 0.15, 0.35)}
        ),
        _intervention_rows(0.5, 0.95, 0.3),
        {"spearman": 0.7, "p_value": 0.001, "ci_low": 0.55, "ci_high": 0.85, "n_heads": 20},
        _baselines(),
    )
    assert list(claims.columns) == CLAIM_COLUMNS
    assert set(claims["verdict"]) <= set(VERDICTS)
    assert set(claims["paper_model"]) == {"gpt2-medium"}
    verdicts = dict(zip(claims["claim_id"], claims["verdict"], strict=True))
    assert verdicts == {
        "overlap": "reproduced",
        "control_overlap_greater_than": "reproduced",
        "control_overlap_facts": "reproduced",
        "intervention_all": "reproduced",
        "intervention_inhibition": "inconclusive",  # CI [0.9, 1.0] straddles 0.815 + 0.1
        "intervention_negative_mover": "partly",  # CI above 0.781 + 0.1; accuracy rises
        "intervention_vs_path_patching": "reproduced",
    }
    assert not claims["rule"].str.contains("nan").any()
    assert not claims["note"].str.contains("nan").any()


def test_claims_when_the_paper_does_not_hold_or_the_model_is_at_chance():
    claims = reuse_claims(
        "m",
        _overlap_rows((0.3, 0.25, 0.4), {"greater_than": (0.55, 0.5, 0.6)}),
        _intervention_rows(0.5, 0.5, -0.05, n_heads=0),
        {"spearman": np.nan, "n_heads": 20},
        _baselines(),
    )
    verdicts = dict(zip(claims["claim_id"], claims["verdict"], strict=True))
    assert verdicts["overlap"] == "not reproduced"  # outside 0.78 +- 0.15, below a control
    assert verdicts["control_overlap_greater_than"] == "not reproduced"  # above the main one
    assert verdicts["intervention_all"] == "not reproduced"  # no head of the group found
    assert (
        "no inhibition or negative-mover head"
        in claims.set_index("claim_id").loc["intervention_all", "rule"]
    )
    assert verdicts["intervention_vs_path_patching"] == "not reproduced"
    gated = reuse_claims(
        "m",
        _overlap_rows((0.78, 0.7, 0.85), {}),
        _intervention_rows(0.5, 0.9, 0.3),
        {"spearman": 0.7, "p_value": 0.001, "ci_low": 0.55, "ci_high": 0.85, "n_heads": 20},
        _baselines(near_chance=("colored_objects",)),
    )
    verdicts = dict(zip(gated["claim_id"], gated["verdict"], strict=True))
    assert verdicts["overlap"] == "inconclusive: model at chance"
    assert verdicts["intervention_vs_path_patching"] == "inconclusive: model at chance"
    assert verdicts["intervention_all"] == "reproduced"  # a behaviour claim: not gated


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-gemma3", "tiny-neox", "tiny-qwen2"])
def test_reuse_runs_on_other_architectures(model_id):
    """Learned positions (GPT-2), sliding-window attention with one K/V head (Gemma 3),
    parallel attention and MLP (NeoX), biased q/k/v (Qwen2): circuits, classes and an
    intervention whose no-op run matches an ordinary forward."""
    loaded = load_bridge(ensure_prepared(model_id))
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": 8}, seed=0)
    table, heads = circuit_and_classes(loaded, records, "ioi", SETTINGS, False)
    cfg = loaded.bridge.cfg
    assert len(heads) == cfg.n_layers * cfg.n_heads
    assert np.isfinite(stage_effects(table)["effect"]).all()
    coloured = generate_task("colored_objects", loaded.tokenizer, {"n_prompts": 6}, seed=0)
    runs = prepare_intervention(loaded, coloured, "colored_objects")
    plain = intervene(loaded, runs, [])
    scores = score_records(loaded.hf_model, loaded.tokenizer, coloured)
    np.testing.assert_allclose(plain["logit_diff"], scores["logit_diff"], atol=1e-4)


def test_per_class_intervals_leave_out_resamples_without_the_class():
    """A resample whose IOI circuit lacks a class says nothing about that class: such
    resamples are dropped (and counted), never scored as overlap 0. One head per stage
    is kept; head (0, 0) wins on prompts 0-1, head (0, 2) on prompts 2-3, so each
    resample's reference circuit has exactly one of the two classes."""
    effects = {(0, 0): [1.0, 1.0, 0.0, 0.0], (0, 1): [0.1] * 4, (0, 2): [0.0, 0.0, 1.5, 1.5]}
    table = pd.DataFrame(
        [
            {"stage": 1, "layer": layer, "head": head, "prompt": prompt,
             "patched_ld": value, "clean_ld": 0.0, "corrupt_ld": 1.0}
            for (layer, head), values in effects.items()
            for prompt, value in enumerate(values)
        ]
    )  # fmt: skip
    classes = pd.DataFrame(
        {"layer": [0, 0, 0], "head": [0, 1, 2], "class": ["mover", "other", "inhibition"]}
    )
    settings = ReuseSettings(n_prompts=4, top_fraction=0.3, bootstrap_samples=200)
    rows = bootstrap_overlap(table, table, 3, settings, classes).set_index("class")
    assert rows.loc["all", "n_resamples"] == 200
    assert list(rows.index) == ["all", "inhibition"]  # the full-data circuit is (0, 2)
    # Only resamples whose reference circuit holds (0, 2) count for "inhibition".
    used = rows.loc["inhibition", "n_resamples"]
    assert 0 < used < 200
    # Replay the draws (reference prompts, then the other task's, per resample).
    rng = np.random.default_rng(settings.seed)
    expected = 0
    for _ in range(200):
        prompts = rng.integers(0, 4, 4)
        rng.integers(0, 4, 4)
        means = [np.mean(np.asarray(values)[prompts]) for values in effects.values()]
        expected += int(np.argsort(-np.abs(means), kind="stable")[0] == 2)
    assert used == expected
    assert 0 <= rows.loc["inhibition", "ci_low"] <= rows.loc["inhibition", "ci_high"] <= 1
