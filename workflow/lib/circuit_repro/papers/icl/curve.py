"""k-shot accuracy of ICL classification, k = 0 .. k_max (Cho et al. 2024, the accuracy
the circuit explains; the paper's k = 0 line of Table 1 is the no-demonstration floor).

A prediction is the arg-max of the label tokens' logits at the query's forerunner, as
the baseline scores ICL (the candidates are the task's labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_repro.engine.forward import length_batches, logits_at
from circuit_repro.engine.stats import bootstrap_ci
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.icl import generate_icl
from circuit_repro.tasks.records import TaskRecord


def label_ids(tokenizer, records: Sequence[TaskRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate token ids per record ``[n, labels]`` and each record's correct column."""
    ids = torch.tensor([[single_token_id(tokenizer, c) for c in r.candidates] for r in records])
    correct = torch.tensor([list(r.candidates).index(r.answer) for r in records])
    return ids, correct


@torch.no_grad()
def candidate_logits(loaded, records: Sequence[TaskRecord], batch_size: int = 16) -> torch.Tensor:
    """Logits of each record's candidates at its final position, ``[n, candidates]``.

    Prompts are batched by length and right-padded
    (:func:`~circuit_repro.engine.forward.length_batches`)."""
    tokenizer = loaded.tokenizer
    ids, _ = label_ids(tokenizer, records)
    encoded = [tokenizer(r.prompt)["input_ids"] for r in records]
    out = torch.empty(ids.shape, dtype=torch.float32)
    for rows, tokens in length_batches(encoded, batch_size, tokenizer.pad_token_id):
        reads = torch.tensor([len(encoded[i]) - 1 for i in rows])
        device = loaded.hf_model.device
        logits = logits_at(loaded, tokens.to(device), reads.to(device), token_ids=ids[rows])
        out[rows] = logits.float().cpu()
    return out


def k_shot_curve(
    loaded,
    icl_task: str,
    k_max: int,
    n_prompts: int,
    seed: int,
    batch_size: int = 16,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Accuracy for every k in ``0 .. k_max`` on fresh seeded prompts of ``icl_task``
    (``"sentiment"`` or ``"topic"``).

    Returns:
        One row per k: ``k``, ``n``, ``accuracy``, ``ci_low``, ``ci_high``, ``chance``.
    """
    rows = []
    for k in tqdm(range(k_max + 1), desc=f"{icl_task} k-shot curve", leave=False):
        records = [
            TaskRecord.from_dict(r)
            for r in generate_icl(
                loaded.tokenizer,
                n_prompts,
                seed=seed + 1000 * k,
                k_shot=k,
                task=icl_task,
                min_prompts=max(1, n_prompts // 2),
            )
        ]
        logits = candidate_logits(loaded, records, batch_size)
        _, correct = label_ids(loaded.tokenizer, records)
        hits = (logits.argmax(-1) == correct).double().numpy()
        low, high = bootstrap_ci(
            hits, n_resamples=bootstrap_samples, confidence=confidence, seed=seed
        )
        rows.append(
            {
                "k": k,
                "n": len(records),
                "accuracy": float(np.mean(hits)),
                "ci_low": low,
                "ci_high": high,
                "chance": 1 / logits.shape[1],
            }
        )
    return pd.DataFrame(rows)
