"""Benchmarks: ``python -m circuit_repro.bench`` (``make bench``).

Measures, in one process on the current machine:

- the fp32 matmul ceiling (best GFLOP/s of square ``torch.matmul`` products), the
  number every other throughput is compared against (DESIGN.md, "Performance model");
- a plain forward pass of the default model on a batch of IOI prompts: wall time and
  achieved GFLOP/s (FLOPs counted from the architecture, see :func:`forward_flops`).

Results go to ``results/bench/forward.json`` and a table on stdout. Performance is
measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from circuit_repro.config import REPO_ROOT
from circuit_repro.models import ensure_prepared, load_model
from circuit_repro.provenance import provenance_record, write_json
from circuit_repro.tasks.ioi import generate_ioi


def best_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_ceiling_gflops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of ``n x n @ n x n`` products (2 n^3 FLOPs each)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        seconds = best_seconds(lambda a=a, b=b: a @ b, repeats=repeats)
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def forward_flops(model, batch: int, seq: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of a decoder-only LM.

    Counts every linear layer (attention projections, MLP, the unembedding at every
    position) from the model's own modules, plus the two attention products (scores
    and weighted values, full ``seq x seq`` as eager attention computes them). Norms,
    activations and softmax are ignored (memory-bound and small).
    """
    from transformers.pytorch_utils import Conv1D

    config = model.config
    linear_weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear | Conv1D)
    )
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    attention = 2 * 2 * batch * n_heads * seq * seq * d_head * config.num_hidden_layers
    return 2 * batch * seq * linear_weights + attention


def bench_forward(model_id: str, batch: int, repeats: int) -> dict:
    model, tokenizer = load_model(ensure_prepared(model_id))
    records = generate_ioi(tokenizer, n_prompts=batch, seed=0)
    inputs = tokenizer([r["prompt"] for r in records], return_tensors="pt", padding=True)
    seq = inputs["input_ids"].shape[1]

    @torch.no_grad()
    def forward():
        return model(**inputs).logits

    seconds = best_seconds(forward, repeats=repeats)
    flops = forward_flops(model, batch, seq)
    return {
        "model": model_id,
        "batch": batch,
        "seq_len": seq,
        "seconds": seconds,
        "gflop": flops / 1e9,
        "gflops_per_s": flops / seconds / 1e9,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "bench" / "forward.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    ceiling = matmul_ceiling_gflops()
    forward = bench_forward(args.model, args.batch, args.repeats)
    result = provenance_record(
        threads=torch.get_num_threads(),
        matmul_ceiling_gflops=ceiling,
        forward=forward,
        forward_fraction_of_ceiling=forward["gflops_per_s"] / ceiling,
    )
    write_json(Path(args.output), result)
    print(f"threads: {torch.get_num_threads()}   fp32 matmul ceiling: {ceiling:.1f} GFLOP/s")
    print(
        f"forward {forward['model']}  batch {forward['batch']} x {forward['seq_len']} tokens: "
        f"{forward['seconds'] * 1e3:.0f} ms, {forward['gflop']:.1f} GFLOP, "
        f"{forward['gflops_per_s']:.1f} GFLOP/s "
        f"({100 * result['forward_fraction_of_ceiling']:.0f}% of ceiling)"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
