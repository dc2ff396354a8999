"""Head-type scores on repeated sequences (circuit_repro.engine.attention) against the
attention patterns transformers returns, and a tiny model trained on the induction
recipe: the repeat becomes predictable and a match-and-copy head forms."""

from __future__ import annotations

import numpy as np
import torch

from circuit_repro.engine.attention import HEAD_TYPES, INDUCTION_SHIFTS, repeated_sequence_scores
from circuit_repro.engine.recipes import recipe_model_and_batches, series_plan
from circuit_repro.engine.training import train
from circuit_repro.models.registry import load_registry


def repeated(n, period, seed=0, vocab=(10, 60)):
    rng = np.random.default_rng(seed)
    first = rng.integers(*vocab, size=(n, period))
    return torch.tensor(np.concatenate([np.zeros((n, 1), dtype=int), first, first], axis=1))


def test_scores_match_the_attention_transformers_returns(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    period, tokens = 5, repeated(6, 5)
    scores = repeated_sequence_scores(loaded, tokens, period, batch_size=4)
    with torch.no_grad():
        attentions = loaded.hf_model(tokens, output_attentions=True).attentions
    queries = torch.arange(1 + period, 1 + 2 * period)
    for layer, pattern in enumerate(attentions):  # [prompt, head, query, key]
        expect = {
            "previous_token": pattern[:, :, queries, queries - 1].mean(-1),
            "duplicate_token": pattern[:, :, queries, queries - period].mean(-1),
            "induction": pattern[:, :, queries[:-1], queries[:-1] - period + 1].mean(-1),
        }
        for name, value in expect.items():
            torch.testing.assert_close(scores[name][:, layer].float(), value, atol=1e-5, rtol=1e-4)
        shifts = [
            pattern[:, :, q, q - period + d].mean(-1)
            for d in INDUCTION_SHIFTS
            for q in [queries[queries - period + d < queries]]
        ]
        best = torch.stack(shifts).max(0).values  # per prompt: an upper bound
        assert (scores["shifted_induction"][:, layer].float() <= best + 1e-5).all()
    # One batch: the best shift is chosen on these prompts' mean, so on average it scores
    # at least the standard (shift 1) induction score, head by head.
    whole = repeated_sequence_scores(loaded, tokens, period, batch_size=32)
    assert (whole["shifted_induction"].mean(0) >= whole["induction"].mean(0) - 1e-9).all()
    assert set(scores) == set(HEAD_TYPES)


def test_induction_recipe_learns_to_copy_and_a_copying_head_forms(tmp_path):
    """The quick stand-in series' recipe, trained here: the repeat's loss falls far
    below the first copy's, and some head's match-and-copy score rises from chance."""
    from circuit_repro.models.load import load_bridge

    entry = load_registry()["tiny-induction-quick"]
    model, tokenizer, batches = recipe_model_and_batches(entry, None)
    run = train(model, batches, series_plan(entry), tmp_path, tokenizer, progress=False)
    period, tokens = 6, repeated(16, 6, seed=3, vocab=(10, 42))
    best, gains = [], []
    for step in (0, 600):
        (run.checkpoints[step] / "provenance.json").write_text("{}")  # a model folder
        loaded = load_bridge(run.checkpoints[step])
        scores = repeated_sequence_scores(loaded, tokens, period)
        best.append(float(scores["shifted_induction"].mean(0).max()))
        with torch.no_grad():
            logits = loaded.hf_model(tokens).logits
        logprobs = torch.log_softmax(logits[:, :-1], -1).gather(2, tokens[:, 1:, None])[..., 0]
        gains.append(float(-logprobs[:, : period - 1].mean() + logprobs[:, period:].mean()))
    assert gains[0] < 0.2 and gains[1] > 2.0
    assert best[0] < 0.15 and best[1] > 0.25
