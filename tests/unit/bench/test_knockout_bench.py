"""Edge knockouts: ours, the plain loop and TransformerLens's run_with_hooks agree."""

from __future__ import annotations

from circuit_repro.bench.knockout import ROW_KEYS, compare


def test_knockouts_agree_with_the_plain_loop_and_transformer_lens(tiny_model):
    loaded = tiny_model("tiny-llama")
    rows = compare(loaded, n_prompts=4)
    assert len(rows) == 2 * len(set(row["layers"] for row in rows))
    for row in rows:
        assert set(row) == set(ROW_KEYS)
        assert row["max_diff"] < 1e-4, row
        assert row["flop_ratio"] > 1.0, row
