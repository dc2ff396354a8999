"""Our DAS (:func:`circuit_repro.engine.subspace.fit_das`) against TransformerLens's.

Both train the same ``LearnedSubspace`` from the same seed with Adam and cross-entropy
over the vocabulary at the final token. TransformerLens 4.3's ``fit_das`` runs the
whole model on the whole prompt for every batch; ours runs only the blocks from the
intervened layer on, at the intervened position, with the earlier positions' keys and
values cached. On prompts of one length, trained full-batch at a constant learning
rate, the two compute the same steps, so the learned bases must agree (parity), and
the time per epoch shows what skipping the unneeded work buys. The FLOP floor of a
step is counted by torch's FLOP counter on each side.

``python -m circuit_repro.bench.das`` prints the table (SmolLM2-135M by default); it is
the third part of ``make bench``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformer_lens.tools.analysis import interchange as tl_interchange

from circuit_repro.bench import report_rows
from circuit_repro.engine.subspace import PositionRuns, collect_at, fit_das
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.paths import REPO_ROOT
from circuit_repro.tasks.ioi import generate_ioi, swap_order

ROW_KEYS = (
    "model",
    "hook",
    "prompts",
    "epochs",
    "ours_s_per_epoch",
    "tl_s_per_epoch",
    "speedup",
    "flop_ratio",
    "basis_max_diff",
    "loss_max_diff",
)


def same_length_pairs(loaded, n_prompts: int, seed: int = 0):
    """IOI prompts of the most common length and their swapped-order sources."""
    tokenizer = loaded.tokenizer
    records = generate_ioi(tokenizer, 6 * n_prompts, seed)
    encoded = [(r, tokenizer(r["prompt"])["input_ids"], swap_order(tokenizer, r)) for r in records]
    encoded = [(r, ids, swapped[1]) for r, ids, swapped in encoded if swapped is not None]
    lengths = np.bincount([len(ids) for _, ids, _ in encoded])
    keep = [item for item in encoded if len(item[1]) == int(lengths.argmax())][:n_prompts]
    base = [ids for _, ids, _ in keep]
    source = [src for _, _, src in keep]
    subject = torch.tensor([tokenizer(r["wrong_answer"])["input_ids"][-1] for r, _, _ in keep])
    return base, source, subject


def compare(loaded, hook: str, n_prompts: int = 16, epochs: int = 3, lr: float = 0.01) -> dict:
    """Train both DAS implementations full-batch on the same prompts; time and compare."""
    base, source, targets = same_length_pairs(loaded, n_prompts)
    end = [len(ids) - 1 for ids in base]
    layer = int(hook.split(".")[1])
    base_tokens, source_tokens = torch.tensor(base), torch.tensor(source)
    positions = torch.tensor(end)
    device = loaded.hf_model.device

    def task_logits(tokens):
        return loaded.bridge(tokens.to(device))[:, -1]

    started = time.perf_counter()
    theirs = tl_interchange.fit_das(
        loaded.bridge,
        hook,
        base_tokens,
        source_tokens,
        targets,
        task_logits,
        rank=1,
        base_positions=positions,
        source_positions=positions,
        epochs=epochs,
        batch_size=len(base),
        lr=lr,
        seed=0,
    )
    tl_seconds = time.perf_counter() - started

    started = time.perf_counter()
    runs = PositionRuns(loaded, base, end, end, start_layer=layer)
    source_acts = collect_at(loaded, source, end, [hook])[hook]
    ours = fit_das(
        runs,
        hook,
        source_acts,
        targets,
        epochs=epochs,
        batch_size=len(base),
        lr=lr,
        final_lr_factor=1.0,
        seed=0,
        progress=False,
    )
    ours_seconds = time.perf_counter() - started

    flops = {}
    with FlopCounterMode(display=False) as counter:
        tl_interchange.fit_das(
            loaded.bridge, hook, base_tokens, source_tokens, targets, task_logits, rank=1,
            base_positions=positions, source_positions=positions, epochs=1,
            batch_size=len(base), lr=lr, seed=0,
        )  # fmt: skip
    flops["tl"] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        fit_das(
            runs, hook, source_acts, targets, epochs=1, batch_size=len(base), lr=lr,
            final_lr_factor=1.0, seed=0, progress=False,
        )  # fmt: skip
    flops["ours"] = counter.get_total_flops()
    return {
        "model": loaded.model_id,
        "hook": hook,
        "prompts": len(base),
        "epochs": epochs,
        "ours_s_per_epoch": ours_seconds / epochs,
        "tl_s_per_epoch": tl_seconds / epochs,
        "speedup": tl_seconds / ours_seconds,
        "flop_ratio": flops["tl"] / max(flops["ours"], 1),
        "basis_max_diff": float((theirs.basis.cpu() - ours.basis.cpu()).abs().max()),
        "loss_max_diff": float(np.abs(np.subtract(theirs.losses, ours.losses)).max()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Our DAS against TransformerLens's fit_das.")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        loaded = load_bridge(ensure_prepared(model))
        layer = loaded.n_layers * 3 // 4  # about where the IOI position feature sits
        for hook in (f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_resid_post"):
            rows.append(compare(loaded, hook, args.prompts, args.epochs))
    report_rows(rows, ROW_KEYS, Path(args.output_dir) / "das.json")


if __name__ == "__main__":
    main()
