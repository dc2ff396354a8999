"""Our AtP, EAP and exact edge patching against TransformerLens's on tiny random models.

The models are the float64 copies of the conftest's tiny random models, so that rounding
does not hide a real difference: two implementations of the same sum agree to about
1e-16 relative. IOI prompts, clean -> corrupt (TransformerLens's clean run is our
source, its corrupted run our base).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuit_repro.bench.transformer_lens_parity import (
    ROW_KEYS,
    atp_nodes,
    direct_path,
    eap_edges,
    every_sender,
    ioi_runs,
    parity_rows,
    print_parity_table,
)

N_PROMPTS = 4
# Float64 sums of the same products in two orders.
SUM_ORDER_RTOL = 1e-9
SUM_ORDER_ATOL = 1e-13


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; on a shared two-core machine, more threads
    oversubscribe the CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def float64_ioi(tiny_model, model_id: str):
    """A tiny model in float64 with its IOI runs and logit-difference metric."""
    loaded = tiny_model(model_id, float64=True)
    runs, metric = ioi_runs(loaded, N_PROMPTS)
    return loaded, runs, metric


def assert_real_numbers(
    values: np.ndarray, expected_items: int, floor: float, min_nonzero: int | None = None
) -> None:
    """The compared values are as many as expected, finite, and not (nearly) all zero:
    the largest above ``floor``, at least ``min_nonzero`` (a quarter by default) above
    ``floor / 100``."""
    assert len(values) == expected_items
    assert np.isfinite(values).all()
    assert np.abs(values).max() > floor
    min_nonzero = expected_items // 4 if min_nonzero is None else min_nonzero
    assert np.count_nonzero(np.abs(values) > floor / 100) >= min_nonzero


@pytest.mark.parametrize("by_position", [False, True], ids=["summed", "by_position"])
def test_atp_nodes_equal_transformer_lens(tiny_model_id, by_position, tiny_model):
    """Every head's z, MLP output and the embedding: our AtP score equals TL's node score
    (summed over positions, or position by position), on all five architectures.

    Sign: ours (source - base) . grad at base; TL (clean - corrupt) . grad at corrupt,
    called with clean = source and corrupt = base, so the numbers are compared as they
    are. Tolerance: rtol 1e-9, atol 1e-13 (float64, the same products summed in another
    order). TL's embed node (hook_embed) is compared with our resid_pre of block 0.
    """
    loaded, runs, metric = float64_ioi(tiny_model, tiny_model_id)
    result = atp_nodes(loaded, runs, metric, by_position=by_position)

    nodes_per_position = 1 + loaded.n_layers * (loaded.n_heads + 1)
    positions = runs.base_tokens.shape[1] if by_position else 1
    # Before the first token where clean and corrupt differ, every score is exactly 0.
    assert_real_numbers(
        result["ours_values"],
        nodes_per_position * positions,
        floor=1e-3,
        min_nonzero=nodes_per_position // 2,
    )
    np.testing.assert_allclose(
        result["ours_values"],
        result["transformer_lens_values"],
        rtol=SUM_ORDER_RTOL,
        atol=SUM_ORDER_ATOL,
    )
    assert result["max_abs_diff"] <= 1e-9 * result["max_abs_value"]


@pytest.mark.parametrize("model_id", ["tiny-gpt2", "tiny-neox"])
def test_eap_edges_equal_transformer_lens(model_id, tiny_model):
    """Every edge of the split-q/k/v graph: our EAP score equals TL's edge score summed
    over positions (TL refuses edges under grouped-query attention and post-norm
    attention, so the multi-head models only; NeoX checks the parallel-block edges).

    Sign: as for AtP nodes, TL clean = our source, corrupt = our base, no flip.
    Tolerance: rtol 1e-9, atol 1e-13 (float64, the same products summed in another order).
    """
    loaded, runs, metric = float64_ioi(tiny_model, model_id)
    result = eap_edges(loaded, runs, metric)

    assert_real_numbers(result["ours_values"], result["items"], floor=1e-3)
    assert "input -> logits" in result["labels"]
    assert "a0.h0 -> a1.h3<k>" in result["labels"]
    parallel = model_id == "tiny-neox"  # its attention does not feed its own layer's MLP
    assert ("a1.h0 -> m1" in result["labels"]) is not parallel
    np.testing.assert_allclose(
        result["ours_values"],
        result["transformer_lens_values"],
        rtol=SUM_ORDER_RTOL,
        atol=SUM_ORDER_ATOL,
    )


DIRECT_PATH_CASES = [
    ("tiny-gpt2", ("q", "k", "v")),
    ("tiny-neox", ("q", "k", "v")),
    ("tiny-llama", ("q",)),  # grouped-query attention: queries only
    ("tiny-qwen2", ("q",)),
]


@pytest.mark.parametrize(("model_id", "receiver_kinds"), DIRECT_PATH_CASES)
def test_direct_path_equals_transformer_lens(model_id, receiver_kinds, tiny_model):
    """Every sender head -> every later head's q (k, v) input: our exact edge patching
    equals TL's get_act_patch_direct_path minus TL's unpatched base metric.

    Sign: patched minus base mean logit difference on both sides (TL corrupted run = our
    base). Tolerance: TL stores each patched metric in a float32 tensor, so its returned
    values are off by up to half a float32 ulp of the patched metric; we allow one ulp,
    2**-23 * (|base metric| + max |change|), plus 1e-12. The metric values TL computed
    before that rounding must agree to atol 1e-10 (float64: measured 1e-16; Llama-style
    norms and softmax compute in float32, where float64 noise can rarely round apart;
    the changes compared reach 1e-4).
    """
    loaded, runs, metric = float64_ioi(tiny_model, model_id)
    result = direct_path(loaded, runs, metric, every_sender(loaded), receiver_kinds)

    n_edges = len(every_sender(loaded)) * loaded.n_heads * len(receiver_kinds)
    assert_real_numbers(result["ours_values"], n_edges, floor=5e-5)
    np.testing.assert_allclose(
        result["ours_values"], result["transformer_lens_unrounded_values"], rtol=0, atol=1e-10
    )
    float32_ulp = 2.0**-23 * (abs(result["base_value"]) + result["max_abs_value"])
    np.testing.assert_allclose(
        result["ours_values"], result["transformer_lens_values"], rtol=0, atol=float32_ulp + 1e-12
    )


def test_direct_path_refuses_keys_and_values_under_grouped_query_attention(tiny_model):
    """Under GQA our key/value input nodes are per K/V group, not per query head."""
    loaded, runs, metric = float64_ioi(tiny_model, "tiny-llama")
    with pytest.raises(ValueError, match="grouped-query attention"):
        direct_path(loaded, runs, metric, [(0, 0)], ("q", "k"))


def test_parity_rows_and_table(tiny_model, capsys):
    """The benchmark's rows on float32 tiny models (tiny Llama, grouped-query like
    SmolLM2, standing in for it): every comparison agrees and the table is one Markdown
    row per comparison.

    Sign: as in the tests above. Tolerance: max abs diff below 1e-6 (float32 forward
    passes; the values compared reach 1e-4 to 1e-2).
    """
    tiny = {model_id: tiny_model(model_id) for model_id in ("tiny-gpt2", "tiny-neox")}
    rows = parity_rows(tiny_model("tiny-llama"), tiny, n_prompts=2, n_direct_path_senders=2)

    assert [row["model"] for row in rows] == [
        "tiny-llama",
        "tiny-gpt2",
        "tiny-neox",
        "tiny-llama",
        "tiny-gpt2",
    ]
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert row["max_abs_diff"] < 1e-6
        assert row["max_abs_value"] > 1e-5
        assert row["speedup"] == pytest.approx(
            row["transformer_lens_seconds"] / row["ours_seconds"]
        )
    assert "2 of 4 senders" in rows[3]["comparison"]
    assert rows[3]["items"] == 2 * 4  # two layer-0 senders, four layer-1 query receivers

    print_parity_table(rows)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + len(rows)
    assert {line.count("|") for line in lines} == {len(ROW_KEYS) + 1}
