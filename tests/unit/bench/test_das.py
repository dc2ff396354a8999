"""Our DAS against TransformerLens's fit_das: the same steps, so the same basis."""

from __future__ import annotations

import pytest

from circuit_repro.bench.das import ROW_KEYS, compare


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2"])
def test_our_das_equals_transformer_lens_fit_das(model_id, tiny_model):
    """Full-batch Adam at a constant rate from the same seed: TransformerLens runs the
    whole model per step, we run from the layer at the final token; the learned bases
    and the losses agree, and ours counts fewer FLOPs."""
    loaded = tiny_model(model_id)
    row = compare(loaded, f"blocks.{loaded.n_layers - 1}.mlp.hook_post", n_prompts=8, epochs=3)
    assert set(row) == set(ROW_KEYS)
    assert row["basis_max_diff"] < 1e-4, row
    assert row["loss_max_diff"] < 1e-4, row
    assert row["flop_ratio"] > 1.5, row
