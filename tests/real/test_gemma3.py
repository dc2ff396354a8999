"""The second offline model: Gemma 3 270M prepared from its four-part PyPI GGUF."""

from __future__ import annotations

import json

import torch

from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import PROVENANCE


def test_gemma3_prepared_and_bridged(gemma3_dir):
    provenance = json.loads((gemma3_dir / PROVENANCE).read_text())
    assert provenance["source_sha256"] == (
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )
    loaded = load_bridge(gemma3_dir)
    config = loaded.hf_model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        18,
        4,
        1,
    )
    tokens = loaded.tokenizer(
        "When Mary and John went to the store, John gave a drink to", return_tensors="pt"
    ).input_ids
    assert tokens[0, 0] == loaded.tokenizer.bos_token_id
    with torch.no_grad():
        hf_logits = loaded.hf_model(tokens).logits
        bridge_logits = loaded.bridge(tokens)
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-4, rtol=0)
    assert loaded.tokenizer.decode(hf_logits[0, -1].argmax()) == " Mary"
