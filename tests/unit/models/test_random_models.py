"""Tests for circuit_repro.models.tiny: offline tokenizer, tiny random LMs, bridge parity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformer_lens.model_bridge import TransformerBridge

from circuit_repro.models.tiny import (
    ARCHITECTURES,
    COLOURS,
    FIRST_NAMES,
    GEMMA3_SLIDING_WINDOW,
    GQA_ARCHITECTURES,
    MAX_VOCAB_SIZE,
    SINGLE_TOKEN_WORDS,
    SPECIAL_TOKEN,
    RandomModelSpec,
    build_offline_tokenizer,
    build_random_model,
    save_random_model,
)

BRIDGE_TOLERANCE = 1e-4
REQUIRED_HOOKS = (
    "blocks.0.attn.hook_z",
    "blocks.0.attn.hook_pattern",
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_mlp_out",
)
# Longer than GEMMA3_SLIDING_WINDOW tokens, so gemma3's local layers mask something.
PROMPTS = (
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Then, Alice and Bob had a long day at the office. Bob gave a book to Alice.",
)
# Texts outside the training corpus: multi-byte characters, digits, odd spacing.
UNSEEN_TEXTS = (
    "  hello\n\nworld  1234 Ünïcödé 😀 it's don't\t!",
    "Question: What is the capital of Peru? Answer: Lima",
)
GQA_KV_HEADS = 2


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """The offline tokenizer, trained once for the module."""
    return build_offline_tokenizer()


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: transformers.PreTrainedTokenizerFast) -> torch.Tensor:
    """Both prompts as one [batch, pos] tensor, cut to a common length."""
    encoded = [tokenizer.encode(prompt) for prompt in PROMPTS]
    length = min(len(ids) for ids in encoded)
    assert length > GEMMA3_SLIDING_WINDOW
    return torch.tensor([ids[:length] for ids in encoded])


@pytest.fixture(scope="module")
def saved_folders(
    tokenizer: transformers.PreTrainedTokenizerFast, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, int | None], Path]:
    """One saved default model per architecture, plus a GQA variant where supported."""
    folders: dict[tuple[str, int | None], Path] = {}
    for architecture in ARCHITECTURES:
        kv_head_options = [None, GQA_KV_HEADS] if architecture in GQA_ARCHITECTURES else [None]
        for n_kv_heads in kv_head_options:
            spec = RandomModelSpec(architecture, n_kv_heads=n_kv_heads)
            folder = tmp_path_factory.mktemp(f"{architecture}_kv{n_kv_heads}")
            save_random_model(build_random_model(spec, tokenizer), tokenizer, folder)
            folders[(architecture, n_kv_heads)] = folder
    return folders


def _logits(model: transformers.PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


# --- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_training_is_deterministic(
    tokenizer: transformers.PreTrainedTokenizerFast,
) -> None:
    retrained = build_offline_tokenizer()
    # to_str() covers vocabulary, merges and the whole pipeline.
    assert retrained.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_tokenizer_training_is_deterministic_across_processes(
    tokenizer: transformers.PreTrainedTokenizerFast,
) -> None:
    # Separate Snakemake jobs each train their own copy; hash-map iteration order in a fresh
    # process (Python or Rust) must not change the result.
    script = (
        "import sys; from circuit_repro.models.tiny import build_offline_tokenizer; "
        "sys.stdout.write(build_offline_tokenizer().backend_tokenizer.to_str())"
    )
    other_process = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert other_process.stdout == tokenizer.backend_tokenizer.to_str()


def test_tokenizer_vocabulary_is_small_and_has_one_special_token(
    tokenizer: transformers.PreTrainedTokenizerFast,
) -> None:
    # Well under the trainer's cap: the cap was never binding, so no word got cut short.
    assert 256 < len(tokenizer) < MAX_VOCAB_SIZE
    special_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    assert special_id == 0
    assert tokenizer.bos_token_id == special_id
    assert tokenizer.eos_token_id == special_id
    assert tokenizer.pad_token_id == special_id
    assert tokenizer.unk_token_id == special_id
    assert tokenizer.padding_side == "right"
    # GPT-2 style: no BOS added by the tokenizer itself.
    assert tokenizer.encode(" Mary") == [tokenizer.convert_tokens_to_ids("ĠMary")]


@pytest.mark.parametrize(
    "word",
    [*FIRST_NAMES[:10], "Zoe", *COLOURS[:5], "A", "B", "C", "D", "7", "17", "France", "Paris"]
    + ["When", "and", "went", "to", "the", "store", "gave", "drink", "Question", "Answer"]
    + ["sentiment", "positive", "negative"],
)
def test_listed_words_are_single_tokens(
    tokenizer: transformers.PreTrainedTokenizerFast, word: str
) -> None:
    assert word in SINGLE_TOKEN_WORDS
    assert len(tokenizer.encode(" " + word)) == 1
    assert len(tokenizer.encode(word)) == 1


def test_word_lists_cover_the_required_categories() -> None:
    assert len(set(FIRST_NAMES)) >= 100
    assert {"red", "blue", "green"} <= set(COLOURS)
    assert {str(digit) for digit in range(10)} <= set(SINGLE_TOKEN_WORDS)


def test_unseen_words_are_split(tokenizer: transformers.PreTrainedTokenizerFast) -> None:
    # Guards against a test above passing trivially, e.g. with a word-level tokenizer.
    assert len(tokenizer.encode(" Bartholomew")) > 1


@pytest.mark.parametrize("text", PROMPTS + UNSEEN_TEXTS)
def test_tokenizer_round_trips_text(
    tokenizer: transformers.PreTrainedTokenizerFast, text: str
) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_save_load_round_trip(
    tokenizer: transformers.PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    tokenizer.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.pad_token_id == tokenizer.pad_token_id
    assert reloaded.padding_side == "right"
    for text in PROMPTS + UNSEEN_TEXTS:
        assert reloaded.encode(text) == tokenizer.encode(text)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tokenizer_reloaded_next_to_a_model(
    architecture: str,
    tokenizer: transformers.PreTrainedTokenizerFast,
    saved_folders: dict[tuple[str, int | None], Path],
) -> None:
    # AutoTokenizer also reads config.json, and may pick a model-specific class from it.
    reloaded = transformers.AutoTokenizer.from_pretrained(saved_folders[(architecture, None)])
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.model_max_length == RandomModelSpec(architecture).n_ctx
    words = [word for word in SINGLE_TOKEN_WORDS if not word.isdigit()]
    assert [reloaded.encode(" " + word) for word in words] == [
        tokenizer.encode(" " + word) for word in words
    ]
    if architecture == "qwen2":
        # transformers forces Qwen2Tokenizer, whose pre-tokenizer splits numbers into
        # digits and a space before a number into its own token, as for real Qwen models.
        assert type(reloaded).__name__ == "Qwen2Tokenizer"
        assert reloaded.tokenize(" 17") == ["Ġ", "1", "7"]
    else:
        assert [reloaded.encode(text) for text in PROMPTS + UNSEEN_TEXTS] == [
            tokenizer.encode(text) for text in PROMPTS + UNSEEN_TEXTS
        ]


# --- models --------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_shape_and_model_settings(
    architecture: str,
    tokenizer: transformers.PreTrainedTokenizerFast,
    prompt_ids: torch.Tensor,
) -> None:
    spec = RandomModelSpec(architecture, n_layers=3, d_model=32, n_heads=2, d_mlp=48)
    model = build_random_model(spec, tokenizer)
    assert not model.training
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert model.config.num_hidden_layers == 3
    assert model.config.hidden_size == 32
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    logits = _logits(model, prompt_ids)
    assert logits.shape == (*prompt_ids.shape, len(tokenizer))
    assert torch.isfinite(logits).all()
    # Not degenerate: different positions give different predictions.
    assert logits[0].std(dim=0).mean() > 1e-3


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_weights_are_deterministic_in_the_seed(
    architecture: str, tokenizer: transformers.PreTrainedTokenizerFast
) -> None:
    first, again, other_seed = (
        build_random_model(RandomModelSpec(architecture, n_layers=1, seed=seed), tokenizer)
        for seed in (0, 0, 1)
    )
    first_state, again_state, other_state = (
        model.state_dict() for model in (first, again, other_seed)
    )
    assert all(torch.equal(first_state[name], again_state[name]) for name in first_state)
    assert not torch.equal(
        first.get_input_embeddings().weight, other_seed.get_input_embeddings().weight
    )


def test_building_a_model_leaves_the_global_rng_alone(
    tokenizer: transformers.PreTrainedTokenizerFast,
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_random_model(RandomModelSpec("gpt2", n_layers=1), tokenizer)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_round_trip_gives_identical_logits(
    architecture: str,
    tokenizer: transformers.PreTrainedTokenizerFast,
    saved_folders: dict[tuple[str, int | None], Path],
    prompt_ids: torch.Tensor,
) -> None:
    model = build_random_model(RandomModelSpec(architecture), tokenizer)
    # Eager attention, as in build_random_model: the default sdpa kernel reorders float ops.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        saved_folders[(architecture, None)], attn_implementation="eager"
    )
    assert type(reloaded) is type(model)
    assert torch.equal(_logits(reloaded, prompt_ids), _logits(model, prompt_ids))


@pytest.mark.parametrize("architecture", sorted(GQA_ARCHITECTURES))
def test_grouped_query_attention(
    architecture: str, tokenizer: transformers.PreTrainedTokenizerFast, prompt_ids: torch.Tensor
) -> None:
    spec = RandomModelSpec(architecture, n_heads=4, n_kv_heads=GQA_KV_HEADS)
    model = build_random_model(spec, tokenizer)
    assert model.config.num_key_value_heads == GQA_KV_HEADS
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.out_features == 4 * spec.resolved_d_head
    assert attention.k_proj.out_features == GQA_KV_HEADS * spec.resolved_d_head
    assert attention.v_proj.out_features == GQA_KV_HEADS * spec.resolved_d_head
    assert _logits(model, prompt_ids).shape == (*prompt_ids.shape, len(tokenizer))


@pytest.mark.parametrize("architecture", sorted(set(ARCHITECTURES) - GQA_ARCHITECTURES))
def test_grouped_query_attention_is_rejected_where_unsupported(architecture: str) -> None:
    with pytest.raises(ValueError, match="no grouped-query attention"):
        RandomModelSpec(architecture, n_heads=4, n_kv_heads=2)
    # Spelling out the default is fine.
    RandomModelSpec(architecture, n_heads=4, n_kv_heads=4)


@pytest.mark.parametrize(
    ("spec_fields", "message"),
    [
        ({"architecture": "mamba"}, "Unknown architecture"),
        ({"architecture": "llama", "n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads"),
        ({"architecture": "llama", "d_model": 30, "n_heads": 4}, "set d_head"),
        ({"architecture": "gpt2", "d_head": 8}, "d_head \\* n_heads == d_model"),
        ({"architecture": "qwen2", "n_layers": 0}, "n_layers must be positive"),
    ],
)
def test_invalid_specs_are_rejected(spec_fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandomModelSpec(**spec_fields)  # type: ignore[arg-type]


def test_gemma3_alternates_local_and_global_layers(
    tokenizer: transformers.PreTrainedTokenizerFast,
) -> None:
    model = build_random_model(RandomModelSpec("gemma3", n_layers=4), tokenizer)
    assert model.config.layer_types == ["sliding_attention", "full_attention"] * 2
    assert model.config.sliding_window == GEMMA3_SLIDING_WINDOW


# --- TransformerBridge ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "n_kv_heads"),
    [(architecture, None) for architecture in ARCHITECTURES]
    + [(architecture, GQA_KV_HEADS) for architecture in sorted(GQA_ARCHITECTURES)],
)
def test_bridge_matches_hf_and_exposes_hooks(
    architecture: str,
    n_kv_heads: int | None,
    tokenizer: transformers.PreTrainedTokenizerFast,
    saved_folders: dict[tuple[str, int | None], Path],
    prompt_ids: torch.Tensor,
) -> None:
    folder = saved_folders[(architecture, n_kv_heads)]
    spec = RandomModelSpec(architecture, n_kv_heads=n_kv_heads)
    model = build_random_model(spec, tokenizer)
    expected = _logits(model, prompt_ids)
    # The bridge needs a tokenizer loaded from a folder (it may reload it with
    # add_bos_token=True from tokenizer.name_or_path); the model may be in memory.
    bridge = TransformerBridge.boot_transformers(
        str(folder),
        hf_model=model,
        tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
        device="cpu",
    )
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(prompt_ids)
    assert (logits - expected).abs().max() < BRIDGE_TOLERANCE

    batch, positions = prompt_ids.shape
    for hook_name in REQUIRED_HOOKS:
        assert hook_name in cache, hook_name
    # hook_z has one entry per query head even under GQA; keys have the kv-head count.
    assert cache["blocks.0.attn.hook_z"].shape == (batch, positions, 4, spec.resolved_d_head)
    assert cache["blocks.0.attn.hook_pattern"].shape == (batch, 4, positions, positions)
    assert cache["blocks.0.attn.hook_k"].shape[2] == spec.resolved_n_kv_heads
    assert cache["blocks.0.hook_resid_pre"].shape == (batch, positions, spec.d_model)
    assert cache["blocks.0.hook_mlp_out"].shape == (batch, positions, spec.d_model)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bridge_boots_from_folder_alone(
    architecture: str,
    tokenizer: transformers.PreTrainedTokenizerFast,
    saved_folders: dict[tuple[str, int | None], Path],
    prompt_ids: torch.Tensor,
) -> None:
    # The hub-free equivalent of boot_transformers("gpt2"): everything comes from disk.
    bridge = TransformerBridge.boot_transformers(
        str(saved_folders[(architecture, None)]), device="cpu"
    )
    expected = _logits(build_random_model(RandomModelSpec(architecture), tokenizer), prompt_ids)
    with torch.no_grad():
        logits = bridge(prompt_ids)
    assert (logits - expected).abs().max() < BRIDGE_TOLERANCE
