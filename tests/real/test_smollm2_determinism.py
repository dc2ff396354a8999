"""SmolLM2's logits on CPU: bitwise equal when recomputed, and within the stated
tolerance of each other whatever the batch size (circuit_repro.bench.batch_size)."""

from __future__ import annotations

import pytest

from circuit_repro.bench.batch_size import BATCH_TOLERANCE, batch_size_dependence, prompt_batch
from circuit_repro.models.load import load_bridge

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task", ["ioi", "facts"])  # one length; right-padded lengths
def test_logits_barely_depend_on_the_batch_and_repeat_exactly(smollm2_dir, task):
    loaded = load_bridge(smollm2_dir, with_bridge=False)
    tokens, mask, read = prompt_batch(loaded, task, n_prompts=16)
    if task == "facts":
        assert (mask.sum(dim=1) < mask.shape[1]).any()  # some prompts are padded
    rows = batch_size_dependence(loaded, tokens, mask, read, batch_sizes=(4, 16))
    for row in rows:
        assert row["repeat_identical"], row
        assert row["relative"] < BATCH_TOLERANCE, row
    # Not vacuous: batching does change the last bits.
    assert max(row["max_abs_diff"] for row in rows) > 0
