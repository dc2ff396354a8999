"""The benchmark's FLOP model against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from circuit_repro.bench.patching import best_seconds, forward_flops
from circuit_repro.models.tiny import RandomModelSpec, build_random_model


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gemma3"])
def test_forward_flops_match_torch_flop_counter(architecture, random_tokenizer):
    spec = RandomModelSpec(architecture, n_layers=2, d_model=64, n_heads=4)
    model = build_random_model(spec, random_tokenizer)
    tokens = torch.randint(0, len(random_tokenizer), (3, 7))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens)
    assert forward_flops(model, batch=3, seq=7) == pytest.approx(
        counter.get_total_flops(), rel=0.02
    )


def test_best_seconds_returns_the_minimum():
    calls = []
    assert best_seconds(lambda: calls.append(1), repeats=4, warmup=2) >= 0
    assert len(calls) == 6
