"""Activation collection: ours (stopping at the layer), the full forward pass and
TransformerLens's run_with_cache give the same activations, ours doing less work; the
training benchmark reports a throughput."""

from __future__ import annotations

import torch

from circuit_repro.bench.transcoders import COLLECTION_KEYS, TRAINING_KEYS, collection, training
from circuit_repro.engine.collect import collect_mlp_io


def test_collection_agrees_with_the_full_pass_and_transformer_lens(tiny_model):
    loaded = tiny_model("tiny-llama")
    contexts = torch.randint(5, 200, (4, 10), generator=torch.Generator().manual_seed(0))
    row = collection(loaded, contexts, 0)
    assert set(row) == set(COLLECTION_KEYS)
    assert row["max_diff"] < 1e-5, row
    assert row["flop_ratio"] > 1.0, row  # block 1 and the unembedding are skipped
    assert row["tokens"] == 4 * 9


def test_training_benchmark_reports_throughput(tiny_model):
    loaded = tiny_model("tiny-llama")
    contexts = torch.randint(5, 200, (4, 10), generator=torch.Generator().manual_seed(0))
    x, y = collect_mlp_io(loaded, contexts, [1], progress=False)[1]
    row = training("tiny-llama", x, y, "transcoder", 2, 16, 3)
    assert set(row) == set(TRAINING_KEYS)
    assert row["vectors_per_s"] > 0 and row["floor_gflop"] > 0
