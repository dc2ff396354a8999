"""The attention intervention of Merullo et al. (2023, §5) on Colored Objects.

The paper repairs GPT-2 medium's Colored Objects errors by making the heads that
inhibit the repeated name on IOI (inhibition heads) and the negative mover attend on
Colored Objects the way they would on IOI. Our reading of "IOI-like": at the final
position each chosen head attends uniformly to the incorrect colours, as IOI
inhibition heads attend to the name that must not be copied. Accuracy is measured
before and after, per head group, and each head alone is compared with its
path-patching effect (Spearman).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from circuit_repro.engine.forward import PrefixCache, logits_at, prefix_reuse_supported
from circuit_repro.engine.hooks import override_attention_rows
from circuit_repro.engine.metrics import LogitDiffMetric
from circuit_repro.engine.stats import bootstrap, bootstrap_ci, percentile_interval
from circuit_repro.papers.reuse import TARGET_TASK, ReuseSettings
from circuit_repro.papers.reuse.circuit import (
    Head,
    circuit_heads,
    head_classes,
    stage_effects,
)
from circuit_repro.papers.reuse.roles import task_roles
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.records import TaskRecord


@dataclass
class InterventionRuns:
    """Prompts prepared for attention interventions at the final position.

    Only the final positions are computed (from ``start`` on); earlier keys and values
    come from a cache of the clean run, which the intervention cannot change.
    """

    tokens: Int[torch.Tensor, "prompt pos"]
    end: Int[torch.Tensor, " prompt"]  # absolute final positions
    key_weights: Float[torch.Tensor, "prompt pos"]  # uniform over the wrong answers' tokens
    candidate_ids: list[list[int]]
    correct_index: Int[torch.Tensor, " prompt"]  # index of the correct candidate
    answer_ids: Int[torch.Tensor, " prompt"]
    wrong_ids: Int[torch.Tensor, " prompt"]
    start: int
    prefix: PrefixCache | None


def prepare_intervention(
    loaded, records: Sequence[TaskRecord], task: str = TARGET_TASK
) -> InterventionRuns:
    """Tokens, target attention (uniform over the wrong answers) and answer ids."""
    roles = task_roles(task)
    if roles.wrong_answers is None:
        raise ValueError(f"task {task!r} defines no wrong-answer tokens to attend to")
    tokenizer = loaded.tokenizer
    encoded = tokenizer([r.prompt for r in records], return_tensors="pt", padding=True)
    tokens = encoded.input_ids
    end = torch.tensor([r.end for r in records])
    weights = torch.zeros(tokens.shape, dtype=torch.float32)
    for row, record in enumerate(records):
        targets = roles.wrong_answers(record)
        weights[row, targets] = 1.0 / len(targets)
    candidate_ids = [[single_token_id(tokenizer, c) for c in r.candidates] for r in records]
    correct_index = torch.tensor([list(r.candidates).index(r.answer) for r in records])
    start = int(end.min())
    prefix = None
    if start and prefix_reuse_supported(loaded, tokens, end):
        prefix = PrefixCache(loaded, tokens)
    else:
        start = 0
    return InterventionRuns(
        tokens=tokens,
        end=end,
        key_weights=weights,
        candidate_ids=candidate_ids,
        correct_index=correct_index,
        answer_ids=torch.tensor([single_token_id(tokenizer, r.answer) for r in records]),
        wrong_ids=torch.tensor([single_token_id(tokenizer, r.wrong_answer) for r in records]),
        start=start,
        prefix=prefix,
    )


@torch.no_grad()
def intervene(loaded, runs: InterventionRuns, heads: Sequence[Head]) -> pd.DataFrame:
    """Per-prompt accuracy and LD with ``heads`` attending IOI-like at the final position.

    Each listed head's attention from the final token is replaced by a uniform
    distribution over the wrong answers' tokens (Colored Objects: the two other
    colours). ``heads=[]`` gives the unmodified model.

    Returns:
        One row per prompt: ``correct`` (the arg-max over the candidates is the answer)
        and ``logit_diff`` (answer - main wrong answer).
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    start = runs.start
    query = runs.end - start
    cache = runs.prefix.prefix(start, 1) if runs.prefix is not None else None
    with contextlib.ExitStack() as stack:
        for layer, layer_heads in by_layer.items():
            stack.enter_context(
                override_attention_rows(loaded.bridge, layer, layer_heads, query, runs.key_weights)
            )
        logits = logits_at(loaded, runs.tokens[:, start:], query, None, cache)
    chosen = torch.stack([logits[row, ids].argmax() for row, ids in enumerate(runs.candidate_ids)])
    metric = LogitDiffMetric(runs.answer_ids, runs.wrong_ids)
    ld = metric(logits, torch.arange(len(runs.end)))
    return pd.DataFrame(
        {"correct": (chosen == runs.correct_index).numpy(), "logit_diff": ld.double().numpy()}
    )


def intervention_groups(classes: pd.DataFrame, circuit: set[Head]) -> dict[str, list[Head]]:
    """The paper's head groups, taken from the IOI circuit: its inhibition heads, its
    negative movers, and both together."""
    lookup = head_classes(classes)
    inhibition = sorted(h for h in circuit if lookup.get(h) == "inhibition")
    negative = sorted(h for h in circuit if lookup.get(h) == "negative mover")
    return {"inhibition": inhibition, "negative mover": negative, "all": inhibition + negative}


def intervention_table(
    loaded,
    runs: InterventionRuns,
    groups: dict[str, list[Head]],
    settings: ReuseSettings,
    before: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Accuracy and mean LD before and after the intervention, per head group, with
    bootstrap CIs (the change is paired over prompts)."""
    before = intervene(loaded, runs, []) if before is None else before
    rows = []
    for group, heads in [("none", []), *groups.items()]:
        after = before if not heads else intervene(loaded, runs, heads)
        change = after["correct"].to_numpy(float) - before["correct"].to_numpy(float)
        row = {
            "group": group,
            "heads": " ".join(f"L{layer}H{head}" for layer, head in heads),
            "n_heads": len(heads),
            "n_prompts": len(after),
            "accuracy": float(after["correct"].mean()),
            "accuracy_before": float(before["correct"].mean()),
            "mean_logit_diff": float(after["logit_diff"].mean()),
            "mean_logit_diff_before": float(before["logit_diff"].mean()),
        }
        for name, values in (("accuracy", after["correct"].to_numpy(float)), ("change", change)):
            low, high = bootstrap_ci(
                values, np.mean, settings.bootstrap_samples, settings.confidence, settings.seed
            )
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def per_head_intervention(
    loaded,
    runs: InterventionRuns,
    effects: pd.DataFrame,
    n_heads: int,
    progress: bool = True,
    before: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Intervene on each of the ``n_heads`` heads with the largest path-patching effect
    (any stage) alone. Both effects are measured as a loss of the behaviour: the
    path-patching effect is the normalized LD drop when the head carries corrupted
    information, the intervention effect the mean LD drop when the head attends
    IOI-like (positive: the intervention hurts).

    Returns:
        One row per head: ``layer, head, stage, path_patching_effect`` (the signed effect
        of its strongest stage), ``intervention_effect``, ``accuracy``.
    """
    strongest = effects.reindex(effects["effect"].abs().sort_values(ascending=False).index)
    strongest = strongest.drop_duplicates(["layer", "head"]).head(n_heads)
    before = intervene(loaded, runs, []) if before is None else before
    base = before["logit_diff"].mean()
    rows = []
    for r in tqdm(list(strongest.itertuples()), desc="per-head intervention", disable=not progress):
        after = intervene(loaded, runs, [(int(r.layer), int(r.head))])
        rows.append(
            {
                "layer": int(r.layer),
                "head": int(r.head),
                "stage": int(r.stage),
                "path_patching_effect": float(r.effect),
                "intervention_effect": float(base - after["logit_diff"].mean()),
                "accuracy": float(after["correct"].mean()),
            }
        )
    return pd.DataFrame(rows)


def spearman_with_ci(table: pd.DataFrame, settings: ReuseSettings) -> dict:
    """Spearman rho between intervention and path-patching effects, with a bootstrap
    CI over heads (resamples where either effect is constant are skipped) and scipy's
    p-value."""
    from scipy.stats import spearmanr

    x = table["intervention_effect"].to_numpy()
    y = table["path_patching_effect"].to_numpy()
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"spearman": np.nan, "p_value": np.nan, "n_heads": len(x)}
    result = spearmanr(x, y)

    def statistic(index: np.ndarray) -> float | None:
        if np.ptp(x[index]) > 0 and np.ptp(y[index]) > 0:
            return spearmanr(x[index], y[index]).statistic
        return None

    samples = bootstrap(statistic, (len(x),), settings.bootstrap_samples, settings.seed)
    low, high = percentile_interval(samples, settings.confidence)
    return {
        "spearman": float(result.statistic),
        "p_value": float(result.pvalue),
        "ci_low": low,
        "ci_high": high,
        "n_heads": len(x),
    }


def intervention_results(
    loaded,
    records: Sequence[TaskRecord],
    reference_classes: pd.DataFrame,
    target_table: pd.DataFrame,
    settings: ReuseSettings,
    task: str = TARGET_TASK,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Rule ``reuse_intervention``: accuracy per head group (:func:`intervention_table`),
    per-head effects (:func:`per_head_intervention`) and their Spearman correlation with
    path patching (:func:`spearman_with_ci`), on all of the task's prompts."""
    runs = prepare_intervention(loaded, records, task)
    groups = intervention_groups(reference_classes, circuit_heads(reference_classes))
    before = intervene(loaded, runs, [])  # the unmodified model, shared by both tables
    table = intervention_table(loaded, runs, groups, settings, before)
    per_head = per_head_intervention(
        loaded, runs, stage_effects(target_table), settings.intervention_heads, progress, before
    )
    return table, per_head, spearman_with_ci(per_head, settings)
