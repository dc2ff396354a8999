"""The ICL circuit paper (Cho et al. 2024): step edges, probes, kernel alignment and head
counts on planted data, the knockout table on a tiny model, and the claims."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from circuit_repro.papers.claims import load_claims
from circuit_repro.papers.icl import PAPER, STEPS, IclSettings
from circuit_repro.papers.icl.claims import icl_claims
from circuit_repro.papers.icl.edges import layer_ranges, range_label, step_edges
from circuit_repro.papers.icl.knockouts import run_knockouts
from circuit_repro.papers.icl.run import contrasts
from circuit_repro.papers.icl.states import (
    ClassStates,
    collect,
    count_heads,
    cross_validated_hits,
    kernel_alignment,
    label_preference,
    merge_alignment,
    probe_forerunners,
)
from circuit_repro.tasks.icl import generate_icl
from circuit_repro.tasks.records import TaskRecord

# Two demonstrations: "sentence: a b\nsentiment: pos\nsentence: c d\nsentiment: neg\n
# sentence: e\nsentiment:" laid out on positions 0..15.
ROLES = {
    "DEMO_0_FORERUNNER": 4,
    "DEMO_0_LABEL": 5,
    "DEMO_1_FORERUNNER": 10,
    "DEMO_1_LABEL": 11,
    "QUERY_FORERUNNER": 15,
    "END": 15,
}


def test_step_edges_follow_the_paper_without_the_sink_or_self_edges():
    edges = step_edges(ROLES)
    assert edges["xi_si"] == [(4, 1), (4, 2), (4, 3), *[(10, k) for k in range(6, 10)]]
    assert edges["xq_sq"] == [(15, k) for k in range(12, 15)]
    assert edges["si_yi"] == [(5, 4), (11, 10)]
    assert edges["yi_sq"] == [(15, 5), (15, 11)]
    assert edges["si_si"] == [(10, 4), (15, 4), (15, 10)]
    for step in STEPS:
        assert all(0 < key < query for query, key in edges[step]), step


def test_layer_ranges_split_depth_like_the_authors():
    assert layer_ranges(30, 4) == [range(0, 7), range(7, 15), range(15, 22), range(22, 30)]
    assert layer_ranges(18, 4) == [range(0, 4), range(4, 9), range(9, 13), range(13, 18)]
    assert layer_ranges(2, 4) == [range(0, 1), range(1, 2)]
    assert range_label(range(7, 15), 30) == "23-50%"


def planted_states(n=40, k=4, layers=4, heads=3, d=16, seed=0) -> ClassStates:
    """Labels readable at the forerunners from layer 2 on; head (3, 1) reads same-label
    demonstration labels, head (1, 0) copies each label's forerunner."""
    rng = np.random.default_rng(seed)
    text_labels = rng.integers(0, 2, size=(n, k + 1))
    direction = rng.normal(size=d)
    forerunners = rng.normal(size=(n, k + 1, layers, d)).astype(np.float32)
    forerunners[:, :, 2:] += 3 * np.where(text_labels, 1, -1)[:, :, None, None] * direction
    labels = forerunners[:, :k] + 0.1 * rng.normal(size=(n, k, layers, d)).astype(np.float32)
    labels = np.roll(labels, 1, axis=2)  # the label at layer l + 1 carries its forerunner at l
    query_position = np.full(n, 40)
    label_positions = np.tile(np.arange(k) * 9 + 8, (n, 1))
    same = text_labels[:, :k] == text_labels[:, -1:]
    to_labels = np.full((n, layers, heads, k), 0.001, dtype=np.float32)
    to_labels[:, 3, 1] = np.where(same, 0.24, 0.01)
    merge = np.full((n, layers, heads, k), 0.01, dtype=np.float32)
    merge[:, 1, 0] = 0.9
    return ClassStates(
        forerunners=forerunners,
        labels=labels,
        query_to_labels=to_labels,
        query_to_forerunners=np.full((n, layers, heads, k), 0.001, dtype=np.float32),
        label_to_forerunner=merge,
        query_position=query_position,
        label_positions=label_positions,
        text_labels=text_labels,
        n_labels=2,
    )


def test_probes_read_the_planted_label_and_not_shuffled_labels():
    states = planted_states()
    table, per_prompt = probe_forerunners(states, folds=4, ridge=1.0, seed=0,
                                          bootstrap_samples=100, confidence=0.95)  # fmt: skip
    accuracy = table.pivot(index="layer", columns="method", values="accuracy")
    assert (accuracy.loc[[2, 3], ["linear", "centroid"]] > 0.95).all().all()
    assert (accuracy.loc[[0, 1], ["linear", "centroid"]] < 0.75).all().all()
    assert (accuracy[["linear_shuffled", "centroid_shuffled"]] < 0.75).all().all()
    assert per_prompt.shape == (40, 4, 4)


def test_cross_validation_keeps_a_prompt_in_one_fold():
    rng = np.random.default_rng(0)
    prompt_features = rng.normal(size=(60, 40))
    x = np.repeat(prompt_features, 3, axis=0)  # a prompt's items are identical ...
    y = np.repeat(rng.integers(0, 2, 60), 3)  # ... and share a random label
    groups = np.repeat(np.arange(60), 3)
    hits = cross_validated_hits(x, y, groups, n_labels=2, folds=5, ridge=1e-3, seed=0)
    # Had a prompt's items straddled folds, both probes would recognise them (accuracy
    # near 1); held out whole, a random label is unpredictable.
    assert hits["linear"].mean() < 0.7 and hits["centroid"].mean() < 0.7


def test_kernel_alignment_is_one_for_the_same_features_and_chance_for_unrelated():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert kernel_alignment(a, 2 * a, 10).mean() == 1.0
    unrelated = kernel_alignment(a, rng.normal(size=(200, 8)), 10).mean()
    assert abs(unrelated - 10 / 199) < 0.03


def test_merge_alignment_prefers_each_labels_own_forerunner():
    states = planted_states(n=80)
    table = merge_alignment(states, neighbours=8, seed=0, bootstrap_samples=100, confidence=0.95)
    wide = table.pivot(index="layer", columns="pairing", values="alignment")
    assert (wide["own"] > 0.8).all()
    assert (wide["same_label_shuffled"] < 0.5).all()


def test_head_counts_find_the_planted_heads():
    states = planted_states()
    heads, counts, per_prompt = count_heads(states, threshold=5.0, seed=0,
                                            bootstrap_samples=100, confidence=0.95)  # fmt: skip
    counted = counts.pivot(index="layer", columns="kind", values="mean_count")
    assert counted.loc[1, "forerunner_token"] == 1.0  # head 0 of layer 1, every label
    assert counted.drop(index=1)["forerunner_token"].sum() == 0
    # Induction: 0.24 per same-label demonstration reaches 5 x 4 / 41 when at least two
    # demonstrations share the query's label.
    same_count = (states.text_labels[:, :4] == states.text_labels[:, -1:]).sum(1)
    expected = np.mean(0.24 * same_count + 0.01 * (4 - same_count) >= 20 / 41)
    assert counted.loc[3, "induction"] == pytest.approx(expected)
    assert counted.drop(index=3)[["induction", "correct_induction"]].sum().sum() == 0
    assert per_prompt["induction"].shape == (40, 4)
    assert expected >= 0.5  # seed 0 makes head (3, 1) an induction head
    preference = label_preference(states, heads)
    assert preference.min() == pytest.approx(0.23, abs=1e-6)


def test_knockout_table_on_a_tiny_model(tiny_model):
    loaded = tiny_model("tiny-llama")
    records = [
        TaskRecord.from_dict(r)
        for r in generate_icl(loaded.tokenizer, 6, seed=0, k_shot=2, task="sentiment")
    ]
    settings = IclSettings(layer_ranges=2, bootstrap_samples=100)
    per_prompt, summary = run_knockouts(loaded, records, settings)
    assert len(summary) == len(STEPS) * 2
    assert set(per_prompt["variant"]) == {"clean", "knockout", "control"}
    assert (summary["n"] == 6).all()
    # The control removes as many edges per layer as the knockout (engine test: exactly).
    assert (summary["edges_per_layer"] > 0).all()
    states = collect(loaded, records)
    assert states.forerunners.shape[:3] == (6, 3, loaded.n_layers)
    table = contrasts(loaded.n_layers, np.zeros((6, loaded.n_layers, 4)),
                      {"induction": np.ones((6, loaded.n_layers)),
                       "forerunner_token": np.ones((6, loaded.n_layers))},
                      np.array([0.1, 0.2]), per_prompt, settings)  # fmt: skip
    assert set(table["measure"]) >= {f"knockout_{step}" for step in STEPS}


def test_claims_cover_every_task_and_judge_directions():
    measures = ["knockout_" + s for s in STEPS] + [
        "probe_middle",
        "induction_depth",
        "correct_induction",
    ]
    contrast = pd.DataFrame(
        {"measure": measures, "value": 0.1, "ci_low": 0.05, "ci_high": 0.15, "n": 40, "note": ""}
    )
    knockouts = pd.DataFrame(
        {"step": ["xi_si"], "layers": ["0-25%"], "clean_accuracy": [0.9],
         "knockout_accuracy": [0.5], "control_accuracy": [0.8]}
    )  # fmt: skip
    baselines = {
        task: {"accuracy": 0.9, "accuracy_ci_low": 0.85, "chance": 0.5, "near_chance": False}
        for task in ("icl_sentiment", "icl_topic")
    }
    table = icl_claims(
        "m",
        {"icl_sentiment": contrast, "icl_topic": contrast},
        {"icl_sentiment": knockouts, "icl_topic": knockouts},
        baselines,
    )
    assert set(table["claim_id"]) == set(load_claims(PAPER.claims_file))
    assert set(table["verdict"]) == {"reproduced"}
    note = table.set_index("claim_id").loc["knockout_xi_si_sentiment", "note"]
    assert "0-25%: 0.50 vs control 0.80" in note
    baselines["icl_topic"]["near_chance"] = True
    gated = icl_claims("m", {"icl_topic": contrast}, {"icl_topic": knockouts}, baselines)
    assert set(gated["verdict"]) == {"inconclusive: model at chance"}
