"""The MCQA paper's measurements on the real default model (SmolLM2-135M, grouped-query
attention, tied embeddings): the direct logit attribution adds up to the logit
difference of its own forward pass, and a head compressed at full rank (queries, keys
and values, which its K/V group shares) is the unmodified head."""

from __future__ import annotations

import pytest
import torch

from circuit_repro.engine.forward import logits_at
from circuit_repro.models.load import load_bridge
from circuit_repro.papers.mcqa.analysis import (
    compression_curve,
    letter_dla,
    letter_ids,
    prompt_tokens,
)
from circuit_repro.tasks.mc_categories import generate_mc_categories
from circuit_repro.tasks.records import TaskRecord

pytestmark = pytest.mark.slow

N_PROMPTS = 8


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_bridge(smollm2_dir)


@pytest.fixture(scope="module")
def records(smollm2):
    raw = generate_mc_categories(smollm2.tokenizer, N_PROMPTS, seed=0)
    return [TaskRecord.from_dict(r) for r in raw]


def _letter_difference(smollm2, records) -> torch.Tensor:
    tokens, read = prompt_tokens(smollm2.tokenizer, records)
    answers, others = letter_ids(smollm2.tokenizer, records)
    logits = logits_at(smollm2, tokens, read).double()
    return logits.gather(1, answers[:, None])[:, 0] - logits.gather(1, others).mean(1)


def test_dla_adds_up_to_the_real_models_logit_difference(smollm2, records):
    table, per_prompt, total, n_top = letter_dla(smollm2, records)
    expected = _letter_difference(smollm2, records)
    # float32 activations of a 30-layer model: the parts agree to about 1e-4 per logit.
    torch.testing.assert_close(per_prompt.sum(1).double(), expected, rtol=0, atol=2e-3)
    torch.testing.assert_close(total.double(), expected, rtol=0, atol=2e-3)
    assert (table["kind"] == "head").sum() == 30 * 9
    assert 1 <= n_top <= len(table)


def test_full_rank_compression_is_the_unmodified_head(smollm2, records):
    curve = compression_curve(
        smollm2, records, layer=23, head=0, sites=("q", "k", "v"), ranks=[smollm2.d_head]
    )
    clean = curve.attrs["per_prompt"]["clean"]
    full = curve.attrs["per_prompt"][f"rank{smollm2.d_head}"]
    assert full == pytest.approx(clean, abs=1e-4)
    assert curve["kept"].iloc[0] == pytest.approx(1.0, abs=1e-3)
