"""Attention-edge knockouts (:class:`circuit_repro.engine.knockout.KnockoutRuns`) against
a plain loop and TransformerLens, on the ICL paper's prompts.

For each edge set of the ICL circuit (Cho et al. 2024) knocked out in one range of
layers, three implementations compute the label logits of the same prompts:

- *naive*: one full forward pass per prompt (whole vocabulary), the knockout hooks on
  every layer of the range;
- *TL*: TransformerLens's ``run_with_hooks`` on the bridge, one prompt at a time, with a
  hook on ``hook_attn_scores`` (the way a TransformerLens user writes a knockout);
- *ours*: batched by length, starting at the range's first block from the cached
  residual stream, computing only positions from the first knocked-out query token and
  unembedding only the label tokens at the read position.

All three must agree (``max_diff``); the FLOP ratio (torch's FLOP counter) is the work
ours skips, so it is the floor of the speed-up on compute-bound hardware.
``python -m circuit_repro.bench.knockout`` prints the table; it is the fourth part of
``make bench``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from circuit_repro.bench import report_rows
from circuit_repro.engine.hooks import knock_out_edges
from circuit_repro.engine.knockout import KnockoutRuns, edge_mask
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.papers.icl.curve import label_ids
from circuit_repro.papers.icl.edges import layer_ranges, range_label, step_edges
from circuit_repro.paths import REPO_ROOT
from circuit_repro.tasks.icl import generate_icl
from circuit_repro.tasks.records import TaskRecord

ROW_KEYS = (
    "model",
    "step",
    "layers",
    "prompts",
    "ours_s",
    "naive_s",
    "tl_s",
    "vs_naive",
    "vs_tl",
    "flop_ratio",
    "max_diff",
)


@torch.no_grad()
def naive(loaded, tokens, plans, ids) -> torch.Tensor:
    """One full forward per prompt with the knockout hooks (the plain loop)."""
    out = []
    for row, (prompt, plan) in enumerate(zip(tokens, plans, strict=True)):
        n = len(prompt)
        masks = {layer: edge_mask(edges, n, n) for layer, edges in plan.items()}
        with knock_out_edges(loaded.bridge, masks):
            logits = loaded.hf_model(torch.tensor([prompt])).logits[0, -1]
        out.append(logits[ids[row]])
    return torch.stack(out)


@torch.no_grad()
def transformer_lens(loaded, tokens, plans, ids) -> torch.Tensor:
    """TransformerLens's ``run_with_hooks``, one prompt at a time."""
    out = []
    for row, (prompt, plan) in enumerate(zip(tokens, plans, strict=True)):
        n = len(prompt)

        def make(mask):
            def hook(scores, hook):
                return scores.masked_fill(mask[None, None], float("-inf"))

            return hook

        hooks = [
            (f"blocks.{layer}.attn.hook_attn_scores", make(edge_mask(edges, n, n)))
            for layer, edges in plan.items()
        ]
        logits = loaded.bridge.run_with_hooks(torch.tensor([prompt]), fwd_hooks=hooks)
        out.append(logits[0, -1, ids[row]])
    return torch.stack(out)


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def compare(loaded, n_prompts: int, steps=("xi_si", "xq_sq"), seed: int = 0) -> list[dict]:
    """Each step in each quarter of depth: ours, the naive loop and TL on the same prompts."""
    records = [
        TaskRecord.from_dict(r)
        for r in generate_icl(loaded.tokenizer, n_prompts, seed=seed, k_shot=4, task="sentiment")
    ]
    tokens = [loaded.tokenizer(r.prompt)["input_ids"] for r in records]
    ids, _ = label_ids(loaded.tokenizer, records)
    ranges = layer_ranges(loaded.n_layers, 4)
    edges = [step_edges(r.roles) for r in records]
    (runs, setup) = timed(
        lambda: KnockoutRuns(
            loaded, tokens, [r.roles.end for r in records], [x.start for x in ranges]
        )
    )
    rows = []
    for step in steps:
        for layers in ranges:
            plans = [dict.fromkeys(layers, e[step]) for e in edges]
            ours, ours_s = timed(lambda plans=plans: runs.logits(plans, ids))
            plain, naive_s = timed(lambda plans=plans: naive(loaded, tokens, plans, ids))
            tl, tl_s = timed(lambda plans=plans: transformer_lens(loaded, tokens, plans, ids))
            # The clean caches serve every knockout: their cost is shared over them all.
            ours_s += setup / (len(steps) * len(ranges))
            ratio = flops(lambda plans=plans: naive(loaded, tokens, plans, ids)) / max(
                1, flops(lambda plans=plans: runs.logits(plans, ids))
            )
            rows.append(
                {
                    "model": loaded.model_id,
                    "step": step,
                    "layers": range_label(layers, loaded.n_layers),
                    "prompts": len(records),
                    "ours_s": ours_s,
                    "naive_s": naive_s,
                    "tl_s": tl_s,
                    "vs_naive": naive_s / ours_s,
                    "vs_tl": tl_s / ours_s,
                    "flop_ratio": ratio,
                    "max_diff": float(
                        max((ours - plain).abs().max(), (ours - tl.float()).abs().max())
                    ),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Edge knockouts: ours, a plain loop and TL.")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        rows.extend(compare(load_bridge(ensure_prepared(model)), args.prompts))
    report_rows(rows, ROW_KEYS, Path(args.output_dir) / "knockout.json")


if __name__ == "__main__":
    main()
