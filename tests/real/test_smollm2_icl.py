"""The ICL circuit on the real default model: forerunners carry their text's label from
the middle layers on, induction heads sit deeper than forerunner-token heads, and cutting
the query's text off its forerunner in the third quarter of depth hurts more than cutting
as many random edges from the same token."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_repro.engine.knockout import KnockoutRuns, random_edges_like
from circuit_repro.models.load import load_bridge
from circuit_repro.papers.icl.curve import label_ids
from circuit_repro.papers.icl.edges import FIRST_KEY, layer_ranges, step_edges
from circuit_repro.papers.icl.states import (
    PROBE_METHODS,
    collect,
    count_heads,
    depth_centre,
    probe_forerunners,
)
from circuit_repro.tasks.icl import generate_icl
from circuit_repro.tasks.records import TaskRecord


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_bridge(smollm2_dir)


@pytest.fixture(scope="module")
def records(smollm2):
    return [
        TaskRecord.from_dict(r)
        for r in generate_icl(smollm2.tokenizer, 24, seed=0, k_shot=4, task="sentiment")
    ]


@pytest.fixture(scope="module")
def states(smollm2, records):
    return collect(smollm2, records)


def test_forerunners_carry_the_label_from_the_middle_layers_on(states):
    _, per_prompt = probe_forerunners(
        states, folds=4, ridge=1.0, seed=0, bootstrap_samples=100, confidence=0.95
    )
    half = per_prompt.shape[1] // 2
    linear = per_prompt[:, half:, PROBE_METHODS.index("linear")].mean()
    shuffled = per_prompt[:, half:, PROBE_METHODS.index("linear_shuffled")].mean()
    assert linear > 0.9
    assert linear - shuffled > 0.3


def test_induction_heads_sit_deeper_than_forerunner_token_heads(states):
    _, _, counts = count_heads(states, 5.0, seed=0, bootstrap_samples=100, confidence=0.95)
    assert counts["induction"].sum() > 0
    assert depth_centre(counts["induction"]) > depth_centre(counts["forerunner_token"]) + 0.1


def test_query_text_knockout_hurts_more_than_random_edges(smollm2, records):
    tokens = [smollm2.tokenizer(r.prompt)["input_ids"] for r in records]
    layers = layer_ranges(smollm2.n_layers, 4)[2]
    ids, correct = label_ids(smollm2.tokenizer, records)
    runs = KnockoutRuns(smollm2, tokens, [r.roles.end for r in records], [layers.start])
    rng = np.random.default_rng(0)
    edges = [step_edges(r.roles)["xq_sq"] for r in records]
    knockout = runs.logits([dict.fromkeys(layers, e) for e in edges], ids)
    control = runs.logits(
        [
            {layer: random_edges_like(e, len(t), rng, first_key=FIRST_KEY) for layer in layers}
            for e, t in zip(edges, tokens, strict=True)
        ],
        ids,
    )

    def margin(logits):
        rows = np.arange(len(records))
        others = logits.clone()
        others[rows, correct] = float("-inf")
        return (logits[rows, correct] - others.max(-1).values).mean().item()

    assert margin(control) - margin(knockout) > 0.25
