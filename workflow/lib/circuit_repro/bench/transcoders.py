"""Transcoder training and activation collection (the transcoders paper's two costs).

- *collection*: MLP inputs and outputs of one layer over corpus contexts.
  :func:`circuit_repro.engine.collect.collect_mlp_io` stops the forward pass at that
  MLP's output; the naive way runs the whole model with the two hooks cached, and
  TransformerLens's ``run_with_cache`` (names filtered) does the same through the
  bridge. All three must give the same activations (``max_diff``). The FLOP ratio
  (torch's FLOP counter) of the naive pass to ours is the work skipped: the blocks
  after the layer and the unembedding.
- *training*: steps of :func:`circuit_repro.engine.dictionary.train_dictionary` on
  those activations, in vectors per second, against the FLOP floor of a step
  (``6 * vectors * width * (d_in + d_out)``: the forward and backward matrix products
  of the encoder and decoder), so ``achieved_gflops`` says how close to the hardware
  the trainer runs.

``python -m circuit_repro.bench.transcoders`` prints both tables; it is the fifth part
of ``make bench``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from circuit_repro.bench import report_rows
from circuit_repro.bench.knockout import flops, timed
from circuit_repro.engine.collect import collect_mlp_io, mlp_hook_names
from circuit_repro.engine.dictionary import SparseDictionary, train_dictionary
from circuit_repro.engine.hooks import cache_activations
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.paths import REPO_ROOT
from circuit_repro.tasks.corpus import package_text, token_contexts

COLLECTION_KEYS = ("model", "layer", "tokens", "ours_s", "naive_s", "tl_s", "tokens_per_s",
                   "vs_naive", "vs_tl", "flop_ratio", "max_diff")  # fmt: skip
TRAINING_KEYS = ("model", "kind", "width", "batch", "steps", "vectors_per_s", "floor_gflop",
                 "achieved_gflops")  # fmt: skip


@torch.no_grad()
def _naive(loaded, contexts, layer):
    names = mlp_hook_names(layer)
    with cache_activations(loaded.bridge, list(names)) as store:
        loaded.hf_model(input_ids=contexts, use_cache=False)
    return store[names[0]][:, 1:].reshape(-1, loaded.d_model), store[names[1]][:, 1:].reshape(
        -1, loaded.d_model
    )


@torch.no_grad()
def _transformer_lens(loaded, contexts, layer):
    names = mlp_hook_names(layer)
    _, cache = loaded.bridge.run_with_cache(contexts, names_filter=lambda n: n in names)
    return cache[names[0]][:, 1:].reshape(-1, loaded.d_model), cache[names[1]][:, 1:].reshape(
        -1, loaded.d_model
    )


def collection(loaded, contexts, layer: int) -> dict:
    """Ours, the naive full pass and TransformerLens on the same contexts."""
    ours, ours_s = timed(lambda: collect_mlp_io(loaded, contexts, [layer], progress=False)[layer])
    naive, naive_s = timed(lambda: _naive(loaded, contexts, layer))
    tl, tl_s = timed(lambda: _transformer_lens(loaded, contexts, layer))
    diff = max(
        float((a - b).abs().max()) for ref in (naive, tl) for a, b in zip(ours, ref, strict=True)
    )
    few = contexts[:2]
    ratio = flops(lambda: _naive(loaded, few, layer)) / max(
        1, flops(lambda: collect_mlp_io(loaded, few, [layer], progress=False))
    )
    tokens = ours[0].shape[0]
    return {"model": loaded.model_id, "layer": layer, "tokens": tokens, "ours_s": ours_s,
            "naive_s": naive_s, "tl_s": tl_s, "tokens_per_s": tokens / ours_s,
            "vs_naive": naive_s / ours_s, "vs_tl": tl_s / ours_s, "flop_ratio": ratio,
            "max_diff": diff}  # fmt: skip


def training(model_id: str, x, y, kind: str, expansion: int, batch: int, steps: int) -> dict:
    """Training throughput of one dictionary on collected activations."""
    d = x.shape[1]
    width = expansion * d
    dictionary = SparseDictionary.from_sample(kind, x, y if kind == "transcoder" else None, width)
    generator = torch.Generator().manual_seed(0)

    def batches():
        while True:
            rows = torch.randint(0, x.shape[0], (batch,), generator=generator)
            yield (x[rows], y[rows]) if kind == "transcoder" else (y[rows], y[rows])

    _, seconds = timed(lambda: train_dictionary(dictionary, batches(), steps, l1=1e-3))
    floor = 6 * batch * width * 2 * d * steps
    return {"model": model_id, "kind": kind, "width": width, "batch": batch, "steps": steps,
            "vectors_per_s": batch * steps / seconds, "floor_gflop": floor / 1e9,
            "achieved_gflops": floor / seconds / 1e9}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Transcoder training and collection.")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--contexts", type=int, default=32)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    collected, trained = [], []
    for model in args.models:
        loaded = load_bridge(ensure_prepared(model))
        layer = loaded.n_layers // 2
        contexts = token_contexts(
            loaded.tokenizer, package_text(), args.context_length, args.contexts, seed=0
        )
        collected.append(collection(loaded, contexts, layer))
        x, y = collect_mlp_io(loaded, contexts, [layer], progress=False)[layer]
        for kind in ("transcoder", "sae"):
            trained.append(training(model, x, y, kind, 4, 1024, args.steps))
    output = Path(args.output_dir)
    report_rows(collected, COLLECTION_KEYS, output / "transcoders_collection.json")
    print()
    report_rows(trained, TRAINING_KEYS, output / "transcoders_training.json")


if __name__ == "__main__":
    main()
