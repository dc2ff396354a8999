"""How much a model's logits depend on the batch they are computed in, on CPU.

Every analysis batches prompts (and patched copies of them) to use the machine well,
so a number could in principle depend on the batch size. This measures it: the logits
at each prompt's read position computed one prompt at a time are the reference, and
each batch size's largest absolute difference from them is reported, together with
the logits' own scale (their standard deviation) and whether the same batch computed
twice is bitwise identical (run-to-run determinism, which the pipeline's byte-identical
reruns rest on). Two prompt sets: IOI prompts, all of one length (no padding), and
factual-recall prompts of different lengths, right-padded with an attention mask.

Matrix products of different shapes take different blocking and summation orders, so
differences of a few float32 ulps of the residual stream are expected; the tests hold
the sweeps to stated tolerances (``BATCH_TOLERANCE``) rather than to bitwise equality.

``python -m circuit_repro.bench.batch_size`` writes ``results/bench/batch_size.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from circuit_repro.bench import report_rows
from circuit_repro.engine.forward import logits_at
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.paths import REPO_ROOT
from circuit_repro.tasks import generate_task

#: Largest difference (in logits) a batch may make, relative to the logits' spread.
BATCH_TOLERANCE = 1e-4
ROW_KEYS = (
    "model",
    "prompts",
    "padded",
    "batch_size",
    "max_abs_diff",
    "logit_std",
    "relative",
    "repeat_identical",
)


def prompt_batch(loaded, task: str, n_prompts: int, seed: int = 0):
    """``(tokens, attention_mask, read_positions)`` of a task's clean prompts, padded on
    the right to one length."""
    records = generate_task(task, loaded.tokenizer, {"n_prompts": n_prompts}, seed=seed)
    batch = loaded.tokenizer([r.prompt for r in records], return_tensors="pt", padding=True)
    read = batch.attention_mask.sum(dim=1) - 1
    return batch.input_ids, batch.attention_mask, read


@torch.no_grad()
def logits_in_batches(loaded, tokens, mask, read, batch_size: int) -> torch.Tensor:
    """Logits at ``read`` of every prompt, computed ``batch_size`` prompts at a time.

    A batch is cut to its own longest prompt, as it would be padded on its own."""
    parts = []
    for start in range(0, tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        length = int(mask[rows].sum(dim=1).max())
        parts.append(logits_at(loaded, tokens[rows, :length], read[rows], mask[rows, :length]))
    return torch.cat(parts)


def batch_size_dependence(loaded, tokens, mask, read, batch_sizes=(4, 16, 64)) -> list[dict]:
    """One row per batch size: the largest difference from one-at-a-time logits, the
    logits' standard deviation, their ratio, and whether recomputing is bitwise equal."""
    reference = logits_in_batches(loaded, tokens, mask, read, 1)
    rows = []
    for batch_size in batch_sizes:
        batched = logits_in_batches(loaded, tokens, mask, read, batch_size)
        again = logits_in_batches(loaded, tokens, mask, read, batch_size)
        difference = float((batched - reference).abs().max())
        spread = float(reference.std())
        rows.append(
            {
                "batch_size": batch_size,
                "max_abs_diff": difference,
                "logit_std": spread,
                "relative": difference / spread,
                "repeat_identical": bool(torch.equal(batched, again)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Batch-size dependence of logits on CPU.")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        loaded = load_bridge(ensure_prepared(model), with_bridge=False)
        for task, padded in (("ioi", False), ("facts", True)):
            tokens, mask, read = prompt_batch(loaded, task, args.prompts)
            for row in batch_size_dependence(loaded, tokens, mask, read):
                rows.append({"model": model, "prompts": task, "padded": padded, **row})
    report_rows(rows, ROW_KEYS, Path(args.output_dir) / "batch_size.json")


if __name__ == "__main__":
    main()
