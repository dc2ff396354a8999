"""Does the model do the task? Per-prompt scores and summaries with bootstrap CIs.

A task record (see :mod:`circuit_repro.tasks.base`) gives a prompt, a single-token
correct ``answer`` and a single-token ``wrong_answer`` (the competing candidate, e.g.
the subject name in IOI). At the prompt's last token we read:

- the logit difference LD = logit(answer) - logit(wrong_answer);
- top-1 accuracy: the answer is the arg-max over the whole vocabulary;
- pairwise accuracy: LD > 0 (chance 0.5 between the two candidates).

No figure should be drawn on a task whose accuracy is at chance without saying so:
:func:`summarize_behaviour` flags it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_repro.metrics import bootstrap_ci, logit_difference
from circuit_repro.tasks.base import single_token_id

# A task is "near chance" when the lower CI bound of pairwise accuracy does not clear
# chance by this margin.
NEAR_CHANCE_MARGIN = 0.05


@torch.no_grad()
def final_logits(
    model, tokenizer, prompts: Sequence[str], batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    """Logits at each prompt's last token, ``[n_prompts, vocab]`` (fp32, on CPU).

    Prompts are right-padded into batches; because attention is causal, padding after
    a prompt's last token does not change that token's logits.
    """
    device = next(model.parameters()).device
    chunks = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="scoring prompts", disable=not progress, unit="batch"):
        batch = tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True
        ).to(device)
        last = batch["attention_mask"].sum(dim=1) - 1  # [batch]
        logits = model(**batch).logits  # [batch, pos, vocab]
        rows = torch.arange(logits.shape[0], device=device)
        chunks.append(logits[rows, last].float().cpu())
    return torch.cat(chunks)


def score_records(
    model, tokenizer, records: Sequence[dict[str, Any]], batch_size: int = 16
) -> pd.DataFrame:
    """Score each record at its final position.

    Returns:
        One row per record: ``id``, ``answer``, ``wrong_answer``, ``answer_logit``,
        ``wrong_logit``, ``logit_diff``, ``answer_prob``, ``answer_rank`` (0 = top),
        ``top1_token``, ``top1_correct``, ``pairwise_correct``.
    """
    logits = final_logits(model, tokenizer, [r["prompt"] for r in records], batch_size)
    correct = torch.tensor([single_token_id(tokenizer, r["answer"]) for r in records])
    wrong = torch.tensor([single_token_id(tokenizer, r["wrong_answer"]) for r in records])
    rows = torch.arange(len(records))
    answer_logit = logits[rows, correct]
    diff = logit_difference(logits, correct, wrong)
    top1 = logits.argmax(dim=-1)
    rank = (logits > answer_logit[:, None]).sum(dim=-1)
    return pd.DataFrame(
        {
            "id": [r["id"] for r in records],
            "answer": [r["answer"] for r in records],
            "wrong_answer": [r["wrong_answer"] for r in records],
            "answer_logit": answer_logit.numpy(),
            "wrong_logit": logits[rows, wrong].numpy(),
            "logit_diff": diff.numpy(),
            "answer_prob": torch.softmax(logits, dim=-1)[rows, correct].numpy(),
            "answer_rank": rank.numpy(),
            "top1_token": [tokenizer.decode([int(t)]) for t in top1],
            "top1_correct": (top1 == correct).numpy(),
            "pairwise_correct": (diff > 0).numpy(),
        }
    )


def summarize_behaviour(
    scores: pd.DataFrame,
    task: str,
    model_id: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy and mean LD with percentile-bootstrap CIs over prompts.

    Returns:
        A flat dict (one row of the baseline table): ``model``, ``task``, ``n``,
        ``accuracy`` (pairwise, LD > 0) and its CI, ``chance`` (0.5),
        ``top1_accuracy`` and its CI, ``mean_logit_diff`` and its CI, and
        ``near_chance`` (the accuracy CI reaches within 5 points of chance: the model
        cannot be said to do the task).
    """
    summary: dict[str, Any] = {"model": model_id, "task": task, "n": len(scores)}
    for name, column in (
        ("accuracy", "pairwise_correct"),
        ("top1_accuracy", "top1_correct"),
        ("mean_logit_diff", "logit_diff"),
    ):
        values = scores[column].to_numpy(dtype=np.float64)
        low, high = bootstrap_ci(values, np.mean, n_resamples, confidence, seed)
        summary[name] = float(values.mean())
        summary[f"{name}_ci_low"] = low
        summary[f"{name}_ci_high"] = high
    summary["chance"] = 0.5
    summary["confidence"] = confidence
    summary["near_chance"] = bool(summary["accuracy_ci_low"] <= 0.5 + NEAR_CHANCE_MARGIN)
    return summary
