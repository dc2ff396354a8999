"""The default model, prepared from its PyPI GGUF, behaves like SmolLM2-135M-Instruct."""

from __future__ import annotations

import json

import pytest
import torch

from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import PROVENANCE

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_bridge(smollm2_dir)


def test_prepared_from_the_verified_gguf(smollm2_dir):
    provenance = json.loads((smollm2_dir / PROVENANCE).read_text())
    assert provenance["source_sha256"] == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )
    assert provenance["architecture"] == "LlamaForCausalLM"
    assert 134_000_000 < provenance["n_parameters"] < 136_000_000


def test_shape_matches_smollm2_135m(smollm2):
    config = smollm2.hf_model.config
    assert (config.num_hidden_layers, config.num_attention_heads) == (30, 9)
    assert (config.num_key_value_heads, config.hidden_size) == (3, 576)
    assert config.vocab_size == 49152


def test_ioi_prompt_top_token_is_mary(smollm2):
    tokens = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = smollm2.hf_model(tokens).logits[0, -1]
    assert smollm2.tokenizer.decode(logits.argmax()) == " Mary"


def test_bridge_logits_equal_hf_logits(smollm2):
    tokens = smollm2.tokenizer(
        [PROMPT, "The capital of France is"], return_tensors="pt", padding=True
    ).input_ids
    with torch.no_grad():
        hf_logits = smollm2.hf_model(tokens).logits
        bridge_logits = smollm2.bridge(tokens)
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-4, rtol=0)
    assert smollm2.tokenizer.decode(hf_logits[1, 4].argmax()) == " Paris"
