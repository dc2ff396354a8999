"""Recall vs reasoning on the real default model: the heads that recall needs and
reasoning does not (attribution patching on the locating pairs), mean-ablated on
held-out pairs, cut recall accuracy more than reasoning accuracy and more than as many
random heads in the same layers do."""

from __future__ import annotations

import pytest
import torch

from circuit_repro.engine.ablation import ablated_logits, ablation_hits
from circuit_repro.engine.circuits import random_component_sets
from circuit_repro.engine.hooks import Component, all_components, model_dims
from circuit_repro.models.load import load_bridge
from circuit_repro.papers.recall import FAMILIES
from circuit_repro.papers.recall.analysis import (
    component_effects,
    family_runs,
    selection_scores,
    split_pairs,
)
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.recall_reasoning import generate_recall_reasoning
from circuit_repro.tasks.records import TaskRecord

RANDOM_DRAWS = 10


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_bridge(smollm2_dir)


@pytest.fixture(scope="module")
def split(smollm2):
    records = generate_recall_reasoning(smollm2.tokenizer, 100, seed=0)
    return split_pairs([TaskRecord.from_dict(r) for r in records], ablation_pairs=25)


@pytest.fixture(scope="module")
def recall_heads(smollm2, split):
    locate_on, _ = split
    heads = all_components(smollm2.bridge, "head")
    scored = {}
    for family in FAMILIES:
        runs = family_runs(
            smollm2.tokenizer, [r for r in locate_on if r.fields["family"] == family]
        )
        scored[family] = component_effects(smollm2, runs, heads)
    ranked = selection_scores({f: t["effect"] for f, t in scored.items()}, "recall", "specific")
    top = scored["recall"].loc[ranked.nlargest(14).index]  # 5% of SmolLM2's 270 heads
    return [Component("head", int(r.layer), int(r.index)) for r in top.itertuples()]


def test_recall_heads_cut_recall_more_than_reasoning_and_random_heads(smollm2, split, recall_heads):
    _, held_out = split
    tokenizer = smollm2.tokenizer
    tokens = torch.tensor([tokenizer(r.prompt)["input_ids"] for r in held_out])
    reads = torch.tensor([r.end for r in held_out])
    ids = torch.tensor([[single_token_id(tokenizer, c) for c in r.candidates] for r in held_out])
    correct = torch.tensor([list(r.candidates).index(r.answer) for r in held_out])
    randoms = random_component_sets(recall_heads, model_dims(smollm2.bridge), RANDOM_DRAWS, seed=0)
    sets = [[], recall_heads, *randoms]
    hits = ablation_hits(ablated_logits(smollm2, tokens, reads, ids, sets, "mean", tokens), correct)
    is_recall = torch.tensor([r.fields["family"] == "recall" for r in held_out]).numpy()
    accuracy = {  # per set: (recall accuracy, reasoning accuracy)
        i: (hits[i][is_recall].mean(), hits[i][~is_recall].mean()) for i in range(len(sets))
    }
    recall_drop = accuracy[0][0] - accuracy[1][0]
    reasoning_drop = accuracy[0][1] - accuracy[1][1]
    random_recall_drop = (
        sum(accuracy[0][0] - accuracy[i][0] for i in range(2, len(sets))) / RANDOM_DRAWS
    )
    assert accuracy[0][0] > 0.6  # the model recalls these facts before the ablation
    assert recall_drop - reasoning_drop > 0.2
    assert recall_drop - random_recall_drop > 0.3
