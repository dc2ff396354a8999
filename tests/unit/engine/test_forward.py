"""Running parts of a model: logits at positions with and without a bridge, sizes."""

from __future__ import annotations

import pytest
import torch

from circuit_repro.engine.forward import (
    PrefixCache,
    gather_rows,
    logits_at,
    prefix_reuse_supported,
)
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.tasks.ioi import generate_ioi


def test_gather_rows_reads_one_position_per_row():
    values = torch.arange(2 * 3 * 4).view(2, 3, 4)
    torch.testing.assert_close(gather_rows(values, torch.tensor([2, 0])), values[[0, 1], [2, 0]])


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gemma3"])
def test_logits_at_positions_need_no_bridge_and_match_full_logits(model_id):
    """Without a prefix cache, logits_at runs the plain HF decoder; it equals the
    causal LM's full logits read at each row's position (soft-capping included)."""
    loaded = load_bridge(ensure_prepared(model_id), with_bridge=False)
    assert loaded.bridge is None
    tokenizer = loaded.tokenizer
    prompts = [r["prompt"] for r in generate_ioi(tokenizer, n_prompts=5, seed=4)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    last = batch.attention_mask.sum(dim=1) - 1
    with torch.no_grad():
        ours = logits_at(loaded, batch.input_ids, last, batch.attention_mask)
        full = loaded.hf_model(**batch).logits  # [prompts, pos, vocab]
    torch.testing.assert_close(ours, gather_rows(full, last), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="without a TransformerBridge"):
        _ = loaded.n_layers


def test_suffix_from_a_prefix_cache_equals_the_full_run():
    loaded = load_bridge(ensure_prepared("tiny-llama"))
    tokens = loaded.tokenizer(
        [r["prompt"] for r in generate_ioi(loaded.tokenizer, n_prompts=4, seed=0)],
        return_tensors="pt",
        padding=True,
    ).input_ids
    read = torch.full((4,), tokens.shape[1] - 1)
    assert prefix_reuse_supported(loaded, tokens, read)
    with torch.no_grad():
        full = logits_at(loaded, tokens, read)
        cache = PrefixCache(loaded, tokens).prefix(3, 1)
        suffix = logits_at(loaded, tokens[:, 3:], read - 3, None, cache)
    torch.testing.assert_close(suffix, full, atol=1e-5, rtol=1e-5)


def test_loaded_model_sizes_come_from_the_bridge():
    loaded = load_bridge(ensure_prepared("tiny-llama"))
    cfg = loaded.bridge.cfg
    assert (loaded.n_layers, loaded.n_heads, loaded.d_head) == (
        cfg.n_layers,
        cfg.n_heads,
        cfg.d_head,
    )
    assert loaded.n_kv_heads == cfg.n_key_value_heads < loaded.n_heads  # grouped queries
    gpt2 = load_bridge(ensure_prepared("tiny-gpt2"))
    assert gpt2.n_kv_heads == gpt2.n_heads
