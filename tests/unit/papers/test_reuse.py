"""Circuit component reuse (Merullo et al. 2023): circuits, classes, overlap, intervention,
claims, on tiny random models and synthetic tables."""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_repro.engine.behaviour import score_records
from circuit_repro.engine.circuits import overlap
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, override_attention_rows
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.papers.claims import CLAIM_COLUMNS, VERDICTS
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.circuit import (
    circuit_and_classes,
    classify_heads,
    heads_per_stage,
    in_mode,
    select_circuit,
    stage_effects,
    stage_receivers,
)
from circuit_repro.papers.reuse.claims import reuse_claims
from circuit_repro.papers.reuse.intervention import (
    correlations,
    intervene,
    intervention_groups,
    per_head_intervention,
    prepare_intervention,
    random_controls,
    random_margin,
)
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
    for task, (_, both, heads) in circuits.items():
        # Both position modes for the main pair; the controls in the configured one.
        expected_modes = {"final", "all"} if task in ("ioi", "colored_objects") else {"final"}
        assert set(both["positions"]) == expected_modes
        table = in_mode(both, SETTINGS.positions)
        stage_one = table[table["stage"] == 1]
        assert len(stage_one) == cfg.n_layers * cfg.n_heads * SETTINGS.n_prompts
        # Stage 2: the queries of stage 1's heads; stage 3: the keys and values of stage
        # 2's. Senders: the heads before the earliest receiver layer (authors' code).
        for stage, kinds in ((2, {"q"}), (3, {"k", "v"})):
            rows = table[table["stage"] == stage]
            if not len(rows):
                continue
            receivers = re.findall(r"L(\d+)\.([qkv])(\d+)", rows["receivers"].iloc[0])
            assert {kind for _, kind, _ in receivers} == kinds
            previous = select_circuit(
                stage_effects(table[table["stage"] == stage - 1]), len(heads), SETTINGS.top_fraction
            )
            assert {int(layer) for layer, _, _ in receivers} == {layer for layer, _ in previous}
            earliest = min(int(layer) for layer, _, _ in receivers)
            senders = set(zip(rows["layer"], rows["head"], strict=True))
            expected = {(layer, head) for layer in range(earliest) for head in range(cfg.n_heads)}
            assert senders == expected
        assert len(heads) == cfg.n_layers * cfg.n_heads
        in_circuit = heads["in_circuit"].sum()
        k = heads_per_stage(len(heads), SETTINGS.top_fraction)
        assert k <= in_circuit <= SETTINGS.stages * k
        # Stage 1 is shared by both modes (equal by construction; the engine tests
        # check that against the hand-frozen loop).
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
    _, both, heads = circuits["ioi"]
    table = in_mode(both, "final")
    assert overlap({(0, 1), (1, 2)}, {(1, 2), (3, 0)}) == (1 / 3, 1, 3)
    assert overlap(set(), set()) == (0.0, 0, 0)
    settings = ReuseSettings(n_prompts=6, top_fraction=0.2, bootstrap_samples=50)
    same = bootstrap_overlap(table, table, len(heads), settings, heads)
    full = same[same["class"] == "all"].iloc[0]
    assert full["overlap"] == 1.0
    # Each side is resampled on its own, so resamples can pick different heads: the
    # interval lies at or below 1.
    assert 0 <= full["ci_low"] <= full["ci_high"] <= 1.0


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
    """The final-position runs with cached keys and values score like an ordinary
    forward."""
    records = circuits["colored_objects"][0]
    runs = prepare_intervention(tiny, records, "colored_objects")
    assert runs.prefix is not None
    assert sum(len(prompts) for _, prompts in runs.by_end) == len(records)
    plain = intervene(tiny, runs, [])
    scores = score_records(tiny.hf_model, tiny.tokenizer, records)
    assert list(plain["correct"]) == list(scores["candidate_correct"])
    np.testing.assert_allclose(plain["logit_diff"], scores["logit_diff"], atol=1e-4)


def test_intervention_sets_the_final_attention_row(tiny, circuits):
    """A forced head's final-token attention is its target only (the wrong colours, or
    the answer's colour) while other heads are left alone; intervene() equals that
    override on a full forward, with and without the final-position shortcut."""
    records = circuits["colored_objects"][0]
    runs = prepare_intervention(tiny, records, "colored_objects")
    heads = [((0, 0), "wrong_answers"), ((1, 1), "answer")]
    seen = {}

    def record(pattern, hook):
        seen[hook.layer()] = pattern.detach().clone()

    with contextlib.ExitStack() as stack:
        for (layer, head), target in heads:
            stack.enter_context(
                override_attention_rows(tiny.bridge, layer, [head], runs.end, runs.targets[target])
            )
        names = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
        stack.enter_context(tiny.bridge.hooks(fwd_hooks=[(name, record) for name in names]))
        with torch.no_grad():
            logits = logits_at(tiny, runs.tokens, runs.end)
    rows = torch.arange(len(records))
    for (layer, head), target in heads:
        weights = runs.targets[target]
        forced_row = seen[layer][rows, head, runs.end]  # [prompts, keys]
        torch.testing.assert_close(forced_row, weights[:, : forced_row.shape[1]])
        other_head = seen[layer][rows, 1 - head, runs.end]
        assert not torch.allclose(other_head, weights[:, : forced_row.shape[1]])
    for record_, wrong_weights, answer_weights in zip(
        records, runs.targets["wrong_answers"], runs.targets["answer"], strict=True
    ):
        query = record_.fields["query_index"]
        wrong = [record_.roles.position(f"COLOR_{k}") for k in range(3) if k != query]
        assert torch.nonzero(wrong_weights).flatten().tolist() == sorted(wrong)
        answer = record_.roles.position(f"COLOR_{query}")
        assert torch.nonzero(answer_weights).flatten().tolist() == [answer]
        assert record_.roles.position("ANSWER_COLOR") == answer
    by_hand = (logits[rows, runs.answer_ids] - logits[rows, runs.wrong_ids]).double().numpy()
    fast = intervene(tiny, runs, heads)
    np.testing.assert_allclose(fast["logit_diff"], by_hand, atol=1e-4)
    full = intervene(tiny, replace(runs, prefix=None), heads)  # every position computed
    np.testing.assert_allclose(full["logit_diff"], by_hand, atol=1e-4)
    assert (fast["logit_diff"] != intervene(tiny, runs, [])["logit_diff"]).any()
    # Forced heads in a later layer only: the runs start at that layer.
    late = [((1, 1), "answer"), ((1, 0), "wrong_answers")]
    np.testing.assert_allclose(
        intervene(tiny, runs, late)["logit_diff"],
        intervene(tiny, replace(runs, prefix=None), late)["logit_diff"],
        atol=1e-4,
    )


def _overlap_rows(main, controls, other_mode=(0.4, 0.3, 0.5)):
    """Overlap rows as overlap_table writes them: the primary mode at full depth, and
    the other position mode (``other_mode``) at depth 2 for the main pair."""

    def row(pair, values, shared, primary=True, positions="final", depth=3):
        value, low, high = values
        return {
            "positions": positions,
            "depth": depth,
            "primary": primary,
            "pair": pair,
            "class": "all",
            "overlap": value,
            "ci_low": low,
            "ci_high": high,
            "shared": shared,
            "union": 10,
            "n_prompts": 16,
        }

    rows = [row("ioi|colored_objects", main, 7)]
    rows += [row(f"ioi|{task}", values, 1) for task, values in controls.items()]
    rows.append(row("ioi|colored_objects", other_mode, 4, False, "all", 2))
    return pd.DataFrame(rows)


def _intervention_rows(before, after, change_low, n_heads=2, margin=(0.2, 0.1, 0.3)):
    rows = [
        {
            "group": "none",
            "target_variant": "configured",
            "heads": "",
            "targets": "",
            "n_heads": 0,
            "n_prompts": 100,
            "accuracy": before,
            "accuracy_ci_low": before - 0.05,
            "accuracy_ci_high": before + 0.05,
            "gain": 0.0,
            "change_ci_low": 0.0,
            "change_ci_high": 0.0,
        }
    ]
    for group in ("inhibition", "negative mover", "all"):
        rows.append(
            {
                "group": group,
                "target_variant": "configured",
                "heads": "L1H1" if n_heads else "",
                "targets": "wrong_answers" if n_heads else "",
                "n_heads": n_heads,
                "n_prompts": 100,
                "accuracy": after,
                "accuracy_ci_low": after - 0.05,
                "accuracy_ci_high": after + 0.05,
                "gain": after - before,
                "change_ci_low": change_low,
                "change_ci_high": change_low + 0.2,
                "random_layer_p95": 0.05 if n_heads else np.nan,
                "random_layer_below": 1.0 if n_heads else np.nan,
                "random_any_p95": 0.04 if n_heads else np.nan,
                "random_any_below": 1.0 if n_heads else np.nan,
                "margin": margin[0] if n_heads else np.nan,
                "margin_ci_low": margin[1] if n_heads else np.nan,
                "margin_ci_high": margin[2] if n_heads else np.nan,
            }
        )
    if n_heads:
        rows.append({**rows[-1], "target_variant": "other", "targets": "answer", "accuracy": 0.3})
    return pd.DataFrame(rows)


def _correlation(rho, p_value=0.001, low=0.55, high=0.85):
    entry = {"spearman": rho, "p_value": p_value, "ci_low": low, "ci_high": high, "n_heads": 20}
    if rho is None:
        entry = {"spearman": None, "p_value": None, "n_heads": 20}
    return {"stage1": dict(entry), "stage2": entry, "stage1_without_movers": dict(entry)}


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
        _correlation(0.7),
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
        "intervention_vs_random": "reproduced",  # margin CI [0.1, 0.3] above zero
        "intervention_vs_path_patching": "reproduced",
    }
    assert not claims["rule"].str.contains("nan").any()
    assert not claims["note"].str.contains("nan").any()
    notes = claims.set_index("claim_id")["note"]
    # The other position mode and depth, and the other negative-mover target, are noted.
    assert "all positions, depth 2: 0.400 [0.300, 0.500]" in notes["overlap"]
    assert "final positions, depth 3" in notes["overlap"]
    assert "other target (answer): accuracy 0.300" in notes["intervention_all"]
    assert "stage 1 without movers" in notes["intervention_vs_path_patching"]


def test_claims_when_the_paper_does_not_hold_or_the_model_is_at_chance():
    claims = reuse_claims(
        "m",
        _overlap_rows((0.3, 0.25, 0.4), {"greater_than": (0.55, 0.5, 0.6)}),
        _intervention_rows(0.5, 0.5, -0.05, n_heads=0),
        _correlation(None),
        _baselines(),
    )
    assert not claims["note"].str.contains("nan").any()
    assert not claims["rule"].str.contains("nan").any()
    verdicts = dict(zip(claims["claim_id"], claims["verdict"], strict=True))
    assert verdicts["overlap"] == "not reproduced"  # outside 0.78 +- 0.15, below a control
    assert verdicts["control_overlap_greater_than"] == "not reproduced"  # above the main one
    assert verdicts["intervention_all"] == "not reproduced"  # no head of the group found
    assert (
        "no inhibition or negative-mover head"
        in claims.set_index("claim_id").loc["intervention_all", "rule"]
    )
    assert verdicts["intervention_vs_path_patching"] == "not reproduced"
    assert verdicts["intervention_vs_random"] == "not reproduced"
    random_heads_win = reuse_claims(
        "m",
        _overlap_rows((0.78, 0.7, 0.85), {}),
        _intervention_rows(0.5, 0.9, 0.3, margin=(-0.1, -0.2, -0.05)),
        _correlation(0.7),
        _baselines(),
    )
    assert random_heads_win.set_index("claim_id").loc["intervention_vs_random", "verdict"] == (
        "not reproduced"
    )
    gated = reuse_claims(
        "m",
        _overlap_rows((0.78, 0.7, 0.85), {}),
        _intervention_rows(0.5, 0.9, 0.3),
        _correlation(0.7),
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
    assert np.isfinite(stage_effects(in_mode(table, "final"))["effect"]).all()
    assert np.isfinite(stage_effects(in_mode(table, "all"))["effect"]).all()
    coloured = generate_task("colored_objects", loaded.tokenizer, {"n_prompts": 6}, seed=0)
    runs = prepare_intervention(loaded, coloured, "colored_objects")
    plain = intervene(loaded, runs, [])
    scores = score_records(loaded.hf_model, loaded.tokenizer, coloured)
    np.testing.assert_allclose(plain["logit_diff"], scores["logit_diff"], atol=1e-4)
    # The final-position runs from the forced layer on equal full runs.
    forced = [((cfg.n_layers - 1, 0), "wrong_answers"), ((cfg.n_layers - 1, 1), "answer")]
    full = intervene(loaded, replace(runs, prefix=None), forced)
    np.testing.assert_allclose(
        intervene(loaded, runs, forced)["logit_diff"], full["logit_diff"], atol=1e-4
    )
    assert np.abs(full["logit_diff"] - plain["logit_diff"]).max() > 1e-4


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


def test_stage_receivers_follow_the_ioi_chain():
    """Stage 2: the queries of stage 1's heads; stage 3 on: their keys and values, one
    K/V head per group under GQA."""
    heads = [(3, 0), (3, 1), (5, 2)]
    assert stage_receivers(2, heads, 4, 2) == [
        Component("q", 3, 0),
        Component("q", 3, 1),
        Component("q", 5, 2),
    ]
    assert stage_receivers(3, heads, 4, 2) == [
        Component("k", 3, 0),
        Component("v", 3, 0),
        Component("k", 5, 1),
        Component("v", 5, 1),
    ]
    with pytest.raises(ValueError, match="stage 1"):
        stage_receivers(1, heads, 4, 2)


def test_overlap_table_reports_each_mode_at_depth_two_and_full_depth(circuits):
    tables = {task: table for task, (_, table, _) in circuits.items()}
    overlap = overlap_table(tables, circuits["ioi"][2], SETTINGS)
    combos = set(zip(overlap["positions"], overlap["depth"], strict=True))
    assert combos == {("final", 2), ("final", 3), ("all", 2), ("all", 3)}
    # The controls are run in the configured mode only.
    assert set(overlap.loc[overlap["pair"] == "ioi|facts", "positions"]) == {"final"}
    primary = overlap[overlap["primary"]]
    assert set(primary["positions"]) == {"final"} and set(primary["depth"]) == {3}
    # Depth 2 is the first two stages of the same table.
    shallow = overlap[(overlap["positions"] == "final") & (overlap["depth"] == 2)]
    same = bootstrap_overlap(
        in_mode(tables["ioi"], "final", 2),
        in_mode(tables["colored_objects"], "final", 2),
        len(circuits["ioi"][2]),
        SETTINGS,
        circuits["ioi"][2],
    )
    got = shallow[shallow["pair"] == "ioi|colored_objects"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[same.columns], same)


def test_random_controls_match_each_group_and_are_seeded(tiny, circuits):
    """Every group gets random_draws sets per sampler: same size, same layers for the
    layer sampler, never a group head, each drawn head forced to the target of the head
    it stands in for; the same seed gives the same draws and numbers."""
    records = circuits["colored_objects"][0]
    runs = prepare_intervention(tiny, records, "colored_objects")
    before = intervene(tiny, runs, [])
    groups = {
        "inhibition": [((1, 0), "wrong_answers"), ((1, 2), "wrong_answers")],
        "negative mover": [((0, 1), "answer")],
    }
    groups["all"] = groups["inhibition"] + groups["negative mover"]
    settings = ReuseSettings(random_draws=20, bootstrap_samples=100, seed=3)
    table, changes = random_controls(tiny, runs, groups, settings, before, progress=False)
    assert len(table) == 3 * 2 * 20
    for (group, sampler), rows in table.groupby(["group", "sampler"]):
        members = {head for head, _ in groups[group]}
        assert changes[(group, sampler)].shape == (20, len(records))
        for text in rows["heads"]:
            drawn = [tuple(map(int, h)) for h in re.findall(r"L(\d+)H(\d+)", text)]
            assert len(drawn) == len(set(drawn)) == len(members)
            assert not set(drawn) & members
            if sampler == "layer":
                assert sorted(layer for layer, _ in drawn) == sorted(layer for layer, _ in members)
        np.testing.assert_allclose(rows["gain"], changes[(group, sampler)].mean(axis=1))
    # A drawn head takes the target of the group head it replaces (same sorted order):
    # replaying one draw by hand gives its accuracy.
    row = table[(table["group"] == "all") & (table["sampler"] == "layer")].iloc[0]
    drawn = [tuple(map(int, h)) for h in re.findall(r"L(\d+)H(\d+)", row["heads"])]
    targets = [target for _, target in sorted(groups["all"])]
    replay = intervene(tiny, runs, list(zip(drawn, targets, strict=True)))
    assert replay["correct"].mean() == pytest.approx(row["accuracy"])
    again, _ = random_controls(tiny, runs, groups, settings, before, progress=False)
    pd.testing.assert_frame_equal(table, again)


def test_random_margin_is_the_gain_over_the_larger_95th_percentile():
    rng = np.random.default_rng(0)
    circuit = rng.integers(0, 2, 50).astype(float)
    layer, anywhere = rng.normal(0, 0.1, (20, 50)), rng.normal(0.05, 0.1, (20, 50))
    settings = ReuseSettings(bootstrap_samples=200)
    result = random_margin(circuit, [layer, anywhere], settings)
    expected = circuit.mean() - max(
        np.quantile(layer.mean(axis=1), 0.95), np.quantile(anywhere.mean(axis=1), 0.95)
    )
    assert result["margin"] == pytest.approx(expected)
    assert result["margin_ci_low"] <= result["margin"] <= result["margin_ci_high"]


def test_groups_give_negative_movers_their_target():
    classes = pd.DataFrame(
        {
            "layer": [0, 1, 2, 2],
            "head": [0, 0, 0, 1],
            "class": ["inhibition", "negative mover", "mover", "inhibition"],
            "in_circuit": [True, True, True, False],
        }
    )
    circuit = {(0, 0), (1, 0), (2, 0)}
    groups = intervention_groups(classes, circuit)
    assert groups["inhibition"] == [((0, 0), "wrong_answers")]
    assert groups["negative mover"] == [((1, 0), "answer")]
    assert groups["all"] == [((0, 0), "wrong_answers"), ((1, 0), "answer")]
    other = intervention_groups(classes, circuit, "wrong_answers")
    assert other["negative mover"] == [((1, 0), "wrong_answers")]


def test_per_head_effects_are_kept_apart_by_stage(tiny, circuits):
    records, table, heads = circuits["colored_objects"]
    runs = prepare_intervention(tiny, records, "colored_objects")
    effects = stage_effects(in_mode(table, "final"))
    per_head = per_head_intervention(tiny, runs, effects, 3, {(0, 0): "mover"}, False)
    assert set(per_head["stage"]) <= {1, 2}
    assert (per_head.groupby("stage").size() <= 3).all()
    for row in per_head.itertuples():
        expected = effects[
            (effects["stage"] == row.stage)
            & (effects["layer"] == row.layer)
            & (effects["head"] == row.head)
        ]["effect"].item()
        assert row.path_patching_effect == pytest.approx(expected)
    result = correlations(per_head, ReuseSettings(bootstrap_samples=100))
    assert {"stage1", "stage1_without_movers"} <= set(result)


def test_the_correlation_without_movers_drops_movers_of_either_task():
    rng = np.random.default_rng(1)
    per_head = pd.DataFrame(
        {
            "stage": [1] * 8 + [2] * 5,
            "layer": range(13),
            "head": 0,
            "class": ["mover", "other", "other", "other", "other", "other", "other", "other"]
            + ["other"] * 5,
            "ioi_class": ["other", "negative mover", "mover", "other", "inhibition", "other"]
            + ["other"] * 7,
            "path_patching_effect": rng.normal(size=13),
            "intervention_effect": rng.normal(size=13),
        }
    )
    result = correlations(per_head, ReuseSettings(bootstrap_samples=100))
    assert result["stage1"]["n_heads"] == 8
    assert result["stage2"]["n_heads"] == 5
    assert result["stage1_without_movers"]["n_heads"] == 5  # three movers dropped
