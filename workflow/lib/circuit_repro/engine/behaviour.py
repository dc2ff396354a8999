# (jaxtyping shape strings such as "prompt vocab" are not forward references)
"""Does the model do the task? Per-prompt scores and summaries with bootstrap CIs.

A task record (:class:`circuit_repro.tasks.records.TaskRecord`) gives a prompt, a single-token
correct ``answer``, a single-token ``wrong_answer`` (the main competing answer, e.g.
the subject name in IOI) and optionally ``candidates`` (the answers the task chooses
among, e.g. the letters A-D) with the ``correct`` ones among them (default: the
answer and the wrong answer, one correct). At the prompt's last token we read:

- the logit difference LD = logit(answer) - logit(wrong_answer);
- accuracy: the arg-max over the candidates is a correct one (chance =
  correct / candidates, averaged over prompts);
- pairwise accuracy: LD > 0;
- top-1 accuracy: the answer is the arg-max over the whole vocabulary;
- probability difference: total probability of the correct candidates minus that of
  the incorrect ones (the greater-than metric of Hanna et al. 2023).

No figure should be drawn on a task whose accuracy is at chance without saying so:
:func:`summarize_behaviour` flags it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.metrics import logit_difference
from circuit_repro.engine.stats import bootstrap_ci
from circuit_repro.models.load import LoadedModel
from circuit_repro.tasks.base import single_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from circuit_repro.tasks.records import TaskRecord

# A task is "near chance" when the lower CI bound of its accuracy does not clear
# chance by this margin.
NEAR_CHANCE_MARGIN = 0.05


@torch.no_grad()
def last_token_logits(
    loaded: LoadedModel, prompts: Sequence[str], batch_size: int = 16, progress: bool = True
) -> Float[torch.Tensor, "prompt vocab"]:
    """Logits at each prompt's last token, ``[n_prompts, vocab]`` (fp32, on CPU).

    Prompts are right-padded into batches; because attention is causal, padding after
    a prompt's last token does not change that token's logits. Only the last token's
    row is unembedded (:func:`~circuit_repro.engine.forward.logits_at`); no
    bridge is needed.
    """
    device = next(loaded.hf_model.parameters()).device
    chunks = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="scoring prompts", disable=not progress, unit="batch"):
        batch = loaded.tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True
        ).to(device)
        last = batch["attention_mask"].sum(dim=1) - 1  # [batch]
        logits = logits_at(loaded, batch["input_ids"], last, batch["attention_mask"])
        chunks.append(logits.float().cpu())
    return torch.cat(chunks)


def score_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[TaskRecord],
    batch_size: int = 16,
) -> pd.DataFrame:
    """Score each record at its final position (see the module docstring).

    ``model`` and ``tokenizer`` are a Hugging Face causal LM and its right-padding
    tokenizer (:func:`circuit_repro.models.load.load_model`; a LoadedModel's
    ``hf_model`` and ``tokenizer``).

    Returns:
        One row per record: ``id``, ``answer``, ``wrong_answer``, ``answer_logit``,
        ``wrong_logit``, ``logit_diff``, ``answer_prob``, ``answer_rank`` (0 = top),
        ``top1_token``, ``top1_correct``, ``pairwise_correct``, ``candidate_correct``
        (arg-max over the candidates is correct), ``chance`` (that record's
        correct / candidates) and ``prob_diff``.
    """
    loaded = LoadedModel(getattr(model, "name_or_path", ""), model, tokenizer)
    logits = last_token_logits(loaded, [r.prompt for r in records], batch_size)
    correct = torch.tensor([single_token_id(tokenizer, r.answer) for r in records])
    wrong = torch.tensor([single_token_id(tokenizer, r.wrong_answer) for r in records])
    rows = torch.arange(len(records))
    probs = torch.softmax(logits.double(), dim=-1)
    answer_logit = logits[rows, correct]
    diff = logit_difference(logits, correct, wrong)
    top1 = logits.argmax(dim=-1)
    rank = (logits > answer_logit[:, None]).sum(dim=-1)
    candidate_correct, chance, prob_diff = [], [], []
    for row, record in enumerate(records):
        candidates, right = record.candidates, record.correct
        ids = [single_token_id(tokenizer, c) for c in candidates]
        is_right = torch.tensor([c in right for c in candidates])
        best = int(logits[row, ids].argmax())
        candidate_correct.append(bool(is_right[best]))
        chance.append(float(is_right.double().mean()))
        mass = probs[row, ids]
        prob_diff.append(float(mass[is_right].sum() - mass[~is_right].sum()))
    return pd.DataFrame(
        {
            "id": [r.id for r in records],
            "answer": [r.answer for r in records],
            "wrong_answer": [r.wrong_answer for r in records],
            "answer_logit": answer_logit.numpy(),
            "wrong_logit": logits[rows, wrong].numpy(),
            "logit_diff": diff.numpy(),
            "answer_prob": probs[rows, correct].numpy(),
            "answer_rank": rank.numpy(),
            "top1_token": [tokenizer.decode([int(t)]) for t in top1],
            "top1_correct": (top1 == correct).numpy(),
            "pairwise_correct": (diff > 0).numpy(),
            "candidate_correct": candidate_correct,
            "chance": chance,
            "prob_diff": prob_diff,
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
        ``accuracy`` (over the candidates) and its CI, ``chance``, ``pairwise_accuracy``
        (LD > 0), ``top1_accuracy``, ``mean_logit_diff`` and ``mean_prob_diff``, each
        with its CI, and ``near_chance`` (the accuracy CI reaches within 5 points of
        chance: the model cannot be said to do the task).
    """
    summary: dict[str, Any] = {"model": model_id, "task": task, "n": len(scores)}
    if "candidate_correct" not in scores:  # tables written before candidates existed
        scores = scores.assign(candidate_correct=scores["pairwise_correct"], chance=0.5)
    if "prob_diff" not in scores:
        scores = scores.assign(prob_diff=np.nan)
    for name, column in (
        ("accuracy", "candidate_correct"),
        ("pairwise_accuracy", "pairwise_correct"),
        ("top1_accuracy", "top1_correct"),
        ("mean_logit_diff", "logit_diff"),
        ("mean_prob_diff", "prob_diff"),
    ):
        values = scores[column].to_numpy(dtype=np.float64)
        low, high = bootstrap_ci(values, np.mean, n_resamples, confidence, seed)
        summary[name] = float(values.mean())
        summary[f"{name}_ci_low"] = low
        summary[f"{name}_ci_high"] = high
    summary["chance"] = float(scores["chance"].mean())
    summary["confidence"] = confidence
    summary["near_chance"] = bool(
        summary["accuracy_ci_low"] <= summary["chance"] + NEAR_CHANCE_MARGIN
    )
    return summary


def near_chance_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per (model, task) whose accuracy is at or near chance.

    ``table`` has one row per model and task (the rows of :func:`summarize_behaviour`).
    These lines go into the report so that no figure on such a task is read as a
    circuit for a behaviour the model does not have.
    """
    lines = []
    for row in table.itertuples():
        if row.near_chance:
            lines.append(
                f"{row.model} is at or near chance on {row.task}: accuracy {row.accuracy:.2f} "
                f"(95% CI {row.accuracy_ci_low:.2f}-{row.accuracy_ci_high:.2f}), chance "
                f"{row.chance:.2f}; analyses of this task on this model show plumbing, not "
                "a circuit for the behaviour."
            )
    return lines


def baseline_summary_html(table: pd.DataFrame) -> str:
    """A small HTML page: the baseline table and the near-chance lines (for the report)."""
    columns = [
        "model",
        "task",
        "n",
        "accuracy",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "chance",
        "mean_logit_diff",
        "mean_logit_diff_ci_low",
        "mean_logit_diff_ci_high",
        "near_chance",
    ]
    lines = near_chance_lines(table) or ["Every model is clearly above chance on every task."]
    items = "".join(f"<li>{line}</li>" for line in lines)
    return (
        "<html><head><meta charset='utf-8'><title>Task baselines</title></head><body>"
        "<h2>Does each model do each task?</h2>"
        f"<ul>{items}</ul>"
        + table[columns].to_html(index=False, float_format=lambda x: f"{x:.3f}")
        + "</body></html>\n"
    )
