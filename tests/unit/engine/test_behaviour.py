"""Behaviour scoring and metrics against independent recomputations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_repro.engine.behaviour import last_token_logits, score_records, summarize_behaviour
from circuit_repro.engine.metrics import logit_difference, normalized_effect
from circuit_repro.engine.stats import bootstrap_ci
from circuit_repro.models.load import LoadedModel
from circuit_repro.models.tiny import RandomModelSpec, build_random_model
from circuit_repro.tasks import generate_task
from circuit_repro.tasks.ioi import generate_ioi


@pytest.fixture(scope="module")
def tiny_llama(random_tokenizer):
    model = build_random_model(RandomModelSpec("llama", n_kv_heads=2), random_tokenizer)
    return model, random_tokenizer


def test_batched_last_token_logits_equal_one_prompt_at_a_time(tiny_llama):
    """Right padding must not change any prompt's last-token logits (no bridge needed)."""
    model, tokenizer = tiny_llama
    prompts = [r["prompt"] for r in generate_ioi(tokenizer, n_prompts=12, seed=3)]
    assert len({len(tokenizer(p).input_ids) for p in prompts}) > 1  # lengths differ
    loaded = LoadedModel("tiny-llama", model, tokenizer)
    batched = last_token_logits(loaded, prompts, batch_size=5, progress=False)
    with torch.no_grad():
        single = torch.stack(
            [model(**tokenizer(p, return_tensors="pt")).logits[0, -1] for p in prompts]
        )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_score_records_matches_a_plain_loop(tiny_llama):
    model, tokenizer = tiny_llama
    records = generate_task("ioi", tokenizer, {"n_prompts": 8}, seed=0)
    scores = score_records(model, tokenizer, records, batch_size=3)
    for record, (_, row) in zip(records, scores.iterrows(), strict=True):
        ids = tokenizer(record.prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0, -1].double()
        io = tokenizer(record.answer, add_special_tokens=False).input_ids[0]
        s = tokenizer(record.wrong_answer, add_special_tokens=False).input_ids[0]
        assert row["logit_diff"] == pytest.approx(float(logits[io] - logits[s]), abs=1e-4)
        assert row["top1_correct"] == (int(logits.argmax()) == io)
        assert row["answer_rank"] == int((logits > logits[io]).sum())
        assert row["answer_prob"] == pytest.approx(float(torch.softmax(logits, -1)[io]), rel=1e-4)


def test_candidate_accuracy_and_probability_difference_match_a_plain_loop(tiny_llama):
    model, tokenizer = tiny_llama
    records = generate_task("ioi", tokenizer, {"n_prompts": 6}, seed=1)
    extra = [" Anna", " Paul"]
    records = [
        dataclasses.replace(
            record,
            candidates=(record.answer, record.wrong_answer, *extra),
            correct=(record.answer, extra[0]),
        )
        for record in records
    ]
    scores = score_records(model, tokenizer, records, batch_size=4)
    for record, (_, row) in zip(records, scores.iterrows(), strict=True):
        ids = tokenizer(record.prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[0, -1].double(), -1)
        cand = [tokenizer(c, add_special_tokens=False).input_ids[0] for c in record.candidates]
        best = record.candidates[int(probs[cand].argmax())]
        assert row["candidate_correct"] == (best in record.correct)
        assert row["chance"] == 0.5
        expected = float(probs[cand[0]] + probs[cand[2]] - probs[cand[1]] - probs[cand[3]])
        assert row["prob_diff"] == pytest.approx(expected, abs=1e-9)
    summary = summarize_behaviour(scores, "ioi", "tiny")
    assert summary["chance"] == 0.5
    assert summary["accuracy"] == pytest.approx(scores["candidate_correct"].mean())


def test_logit_difference_rows():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    diff = logit_difference(logits, torch.tensor([2, 0]), torch.tensor([0, 1]))
    torch.testing.assert_close(diff, torch.tensor([2.0, 1.5]))


def test_normalized_effect_endpoints():
    # Clean (LD 3) patched into corrupt (LD -1): base = corrupt, source = clean.
    assert normalized_effect(3.0, base=-1.0, source=3.0) == 1.0
    assert normalized_effect(-1.0, base=-1.0, source=3.0) == 0.0
    assert normalized_effect(1.0, base=-1.0, source=3.0) == 0.5
    # The mirror direction (corrupt into clean): 1 = the behaviour fully broken.
    assert normalized_effect(-1.0, base=3.0, source=-1.0) == 1.0
    assert normalized_effect(2.0, base=3.0, source=-1.0) == 0.25


def test_bootstrap_ci_matches_a_plain_loop_and_covers_the_mean():
    values = np.random.default_rng(1).normal(2.0, 1.0, size=200)
    low, high = bootstrap_ci(values, n_resamples=500, confidence=0.9, seed=4)
    rng = np.random.default_rng(4)
    indices = rng.integers(0, values.size, size=(500, values.size))
    means = np.array([values[row].mean() for row in indices])
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])))
    assert low < values.mean() < high
    # The interval is roughly mean +- 1.645 standard errors.
    assert high - low == pytest.approx(2 * 1.645 / np.sqrt(200), rel=0.25)
    assert bootstrap_ci(values, np.median, 200, seed=4) != bootstrap_ci(values, n_resamples=200)


def test_summary_flags_near_chance():
    rng = np.random.default_rng(0)
    at_chance = pd.DataFrame(
        {
            "candidate_correct": rng.random(100) < 0.25,
            "chance": 0.25,
            "prob_diff": rng.normal(0, 0.1, 100),
            "pairwise_correct": rng.random(100) < 0.5,
            "top1_correct": np.zeros(100, bool),
            "logit_diff": rng.normal(0, 1, 100),
        }
    )
    good = at_chance.assign(
        candidate_correct=True, pairwise_correct=True, logit_diff=3.0 + at_chance["logit_diff"]
    )
    assert summarize_behaviour(at_chance, "ioi", "m")["near_chance"]
    summary = summarize_behaviour(good, "ioi", "m")
    assert not summary["near_chance"]
    assert summary["accuracy"] == 1.0 and summary["chance"] == 0.25
    assert summary["mean_logit_diff_ci_low"] < summary["mean_logit_diff"]
