"""MLP input/output collection for transcoders: exact values, early stop, shards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from circuit_repro.engine.collect import (
    MANIFEST,
    ShuffledBatches,
    collect_mlp_io,
    collect_to_shards,
    collection_throughput,
    load_shards,
    mlp_hook_names,
)
from circuit_repro.engine.hooks import cache_activations, with_hooks

N_CONTEXTS, CONTEXT_LENGTH, SKIP = 5, 9, 1


def _contexts(loaded, seed: int = 0, n: int = N_CONTEXTS, length: int = CONTEXT_LENGTH):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(loaded.tokenizer), (n, length), generator=generator)


def _kept(activation: torch.Tensor, skip: int) -> torch.Tensor:
    """``[context, pos, d]`` -> rows (context, position) from ``skip`` on."""
    return activation[:, skip:].reshape(-1, activation.shape[-1])


def test_mlp_io_equals_the_full_forward_and_stops_at_the_layer(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    bridge, layer = loaded.bridge, 0
    contexts = _contexts(loaded)
    x_name, y_name = mlp_hook_names(layer)
    with torch.no_grad(), cache_activations(bridge, [x_name, y_name, "blocks.0.ln2.hook_out"]) as c:
        bridge(contexts)

    later_runs = []
    counters = [
        (f"blocks.{layer + 1}.hook_resid_pre", lambda a, hook: later_runs.append(hook.name)),
        ("ln_final.hook_in", lambda a, hook: later_runs.append(hook.name)),
    ]
    with with_hooks(bridge, counters):
        pairs = collect_mlp_io(loaded, contexts, [layer], batch_size=2, skip_positions=SKIP)
    assert later_runs == []

    x, y = pairs[layer]
    n_rows = N_CONTEXTS * (CONTEXT_LENGTH - SKIP)
    assert x.shape == y.shape == (n_rows, bridge.cfg.d_model)
    assert x.dtype == y.dtype == torch.float32 and x.device.type == "cpu"
    torch.testing.assert_close(x, _kept(c[x_name], SKIP), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, _kept(c[y_name], SKIP), atol=1e-5, rtol=1e-5)
    # The MLP input is the pre-MLP norm's output, and the MLP module maps x to y.
    torch.testing.assert_close(c[x_name], c["blocks.0.ln2.hook_out"])
    with torch.no_grad():
        torch.testing.assert_close(bridge.blocks[layer].mlp(x), y, atol=1e-5, rtol=1e-5)


def test_gemma3_mlp_output_is_before_the_post_feedforward_norm(tiny_model):
    loaded = tiny_model("tiny-gemma3")
    names = ["blocks.0.mlp.hook_out", "blocks.0.ln2_post.hook_in", "blocks.0.hook_mlp_out"]
    with torch.no_grad(), cache_activations(loaded.bridge, names) as c:
        loaded.bridge(_contexts(loaded))
    torch.testing.assert_close(c[names[0]], c[names[1]])
    assert not torch.allclose(c[names[0]], c[names[2]])


def test_several_layers_in_one_pass_and_skip_positions(tiny_model):
    loaded = tiny_model("tiny-llama")
    contexts = _contexts(loaded, seed=1)
    names = [name for layer in (0, 1) for name in mlp_hook_names(layer)]
    with torch.no_grad(), cache_activations(loaded.bridge, names) as c:
        loaded.bridge(contexts)
    final_runs = []
    with with_hooks(loaded.bridge, [("ln_final.hook_in", lambda a, hook: final_runs.append(1))]):
        pairs = collect_mlp_io(loaded, contexts, [1, 0], batch_size=3, skip_positions=0)
    assert final_runs == [] and sorted(pairs) == [0, 1]
    for layer in (0, 1):
        for got, name in zip(pairs[layer], mlp_hook_names(layer), strict=True):
            torch.testing.assert_close(got, _kept(c[name], 0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        collect_mlp_io(loaded, contexts, [loaded.n_layers], progress=False)
    with pytest.raises(ValueError, match="skip_positions"):
        collect_mlp_io(loaded, contexts, [0], skip_positions=CONTEXT_LENGTH, progress=False)


def test_collection_throughput_is_positive(tiny_model):
    loaded = tiny_model("tiny-llama")
    assert collection_throughput(loaded, _contexts(loaded, n=4), layer=1, batch_size=2) > 0


# ------------------------------------------------------------------------- shards


@pytest.fixture(scope="module")
def shard_run(tiny_model, tmp_path_factory):
    """Layers 0 and 1 of tiny-llama over 7 contexts (56 rows) in shards of 10 rows."""
    loaded = tiny_model("tiny-llama")
    contexts = _contexts(loaded, seed=2, n=7)
    out_dir = tmp_path_factory.mktemp("shards")
    (out_dir / "shard_0099.safetensors").write_bytes(b"stale")
    manifest = collect_to_shards(
        loaded, contexts, [0, 1], out_dir, shard_tokens=10, batch_size=3, progress=False
    )
    expected = collect_mlp_io(loaded, contexts, [0, 1], batch_size=7, progress=False)
    return out_dir, manifest, expected


def test_shards_hold_the_collection(shard_run):
    out_dir, manifest, expected = shard_run
    assert manifest == json.loads((out_dir / MANIFEST).read_text())
    assert manifest["n_tokens"] == 56 and manifest["layers"] == [0, 1]
    assert manifest["context_length"] == CONTEXT_LENGTH and manifest["skip_positions"] == 1
    assert [s["n_tokens"] for s in manifest["shards"]] == [10, 10, 10, 10, 10, 6]
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == [MANIFEST] + [f"shard_{i:04d}.safetensors" for i in range(6)]
    with safe_open(str(out_dir / "shard_0000.safetensors"), framework="pt") as shard:
        assert sorted(shard.keys()) == ["x.0", "x.1", "y.0", "y.1"]
    for layer in (0, 1):
        for got, want in zip(load_shards(out_dir, layer), expected[layer], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="not 5"):
        load_shards(out_dir, 5)


def test_bfloat16_shards_read_back_as_float32(tiny_model, tmp_path):
    loaded = tiny_model("tiny-llama")
    contexts = _contexts(loaded, n=2)
    collect_to_shards(loaded, contexts, [0], tmp_path, 100, dtype=torch.bfloat16, progress=False)
    x, _ = load_shards(tmp_path, 0)
    want, _ = collect_mlp_io(loaded, contexts, [0], progress=False)[0]
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, want.bfloat16().float())


def _row_ids(rows: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """Index in ``reference`` of each row of ``rows`` (rows are distinct vectors)."""
    index = {row.numpy().tobytes(): i for i, row in enumerate(reference)}
    return [index[row.numpy().tobytes()] for row in rows]


def test_shuffled_batches_cover_each_row_once_per_epoch_and_mix_shards(shard_run):
    out_dir, _, _ = shard_run
    x_all, y_all = load_shards(out_dir, 1)
    batches = ShuffledBatches(out_dir, 1, batch_size=8, seed=0, buffer_shards=2, epochs=2)
    assert len(batches) == 14 and batches.batches_per_epoch == 7
    collected = list(batches)
    assert len(collected) == 14
    assert [len(x) for x, _ in collected[:7]] == [8] * 7
    for epoch in (collected[:7], collected[7:]):
        ids = [i for x, y in epoch for i in _row_ids(x, x_all)]
        assert sorted(ids) == list(range(56))
        for x, y in epoch:  # pairs stay pairs
            torch.testing.assert_close(y, y_all[_row_ids(x, x_all)])
    first_epoch = [_row_ids(x, x_all) for x, _ in collected[:7]]
    second_epoch = [_row_ids(x, x_all) for x, _ in collected[7:]]
    assert first_epoch != second_epoch
    # A batch mixes rows of different shards (10 rows per shard).
    assert any(len({i // 10 for i in ids}) > 1 for ids in first_epoch)
    # Same seed, same batches; another seed, others.
    again = list(ShuffledBatches(out_dir, 1, batch_size=8, seed=0, buffer_shards=2, epochs=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(collected, again, strict=True))
    other = next(iter(ShuffledBatches(out_dir, 1, batch_size=8, seed=1, buffer_shards=2)))
    assert not torch.equal(other[0], collected[0][0])


def test_shuffled_batches_loop_forever_without_epochs(shard_run):
    out_dir, _, _ = shard_run
    batches = ShuffledBatches(out_dir, 0, batch_size=32, seed=0)
    iterator = iter(batches)
    sizes = [len(next(iterator)[0]) for _ in range(5)]
    assert sizes == [32, 24, 32, 24, 32]
    with pytest.raises(TypeError):
        len(batches)
