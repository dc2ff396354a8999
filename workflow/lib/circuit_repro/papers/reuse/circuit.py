"""Circuits by path patching, stage by stage, and head classes (Merullo et al. 2023, §3).

The stages follow the IOI circuit's chain backwards (Wang et al. 2022; Merullo et al.
2023, Figure 3: "detecting a duplication and using that duplication to decide which
token to copy"). Stage 1 patches every head (corrupted -> clean) into the final
residual stream (the movers); stage 2 into the queries of the stage-1 heads (what tells
a mover where to look: the inhibition heads); stage 3 into the keys and values of the
stage-2 heads (what the inhibition heads read at the repeated token: duplicate-token
and induction heads); an optional stage 4 goes into the keys and values of the stage-3
heads. The top ``top_fraction`` of heads by absolute effect is selected at each stage;
the circuit is their union.

Senders are patched and receivers put back at the final position (``positions:
final``, the authors' code) or at every position (``all``, Wang et al.); see
:func:`circuit_repro.engine.path_patching.path_patching`.
A sender's effect is the paper's normalized metric
``(LD_patched - LD_clean) / (LD_corrupt - LD_clean)``: 1 when the patch alone turns the
clean behaviour into the corrupted one, negative for heads that work against the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.attention import attention_at_roles
from circuit_repro.engine.circuits import top_k_by_magnitude
from circuit_repro.engine.hooks import Component, kv_group
from circuit_repro.engine.metrics import Metric, normalized_effect
from circuit_repro.engine.patching import PatchingRuns, runs_from_records
from circuit_repro.engine.path_patching import (
    DEFAULT_TOKEN_BUDGET,
    RunCache,
    cache_runs,
    path_patching,
)
from circuit_repro.papers.reuse import (
    POSITION_MODES,
    REFERENCE_TASK,
    TARGET_TASK,
    ReuseSettings,
)
from circuit_repro.papers.reuse.roles import attention_role_pairs, task_roles
from circuit_repro.tasks.records import TaskRecord

#: Head classes, in the order figures list them.
CLASSES = ("mover", "negative mover", "inhibition", "duplicate-token", "induction", "other")

#: Attention score -> the class it suggests (see :func:`classify_heads`).
SCORE_CLASSES = {
    "end_to_answer": "mover",
    "end_to_repeated": "inhibition",
    "repeated_to_first": "duplicate-token",
    "repeated_to_after_first": "induction",
}

Head = tuple[int, int]


def heads_per_stage(n_heads: int, top_fraction: float) -> int:
    """Heads selected per path-patching stage: ``ceil(top_fraction * n_heads)``, at least 1."""
    return max(1, math.ceil(top_fraction * n_heads - 1e-9))


def top_heads(effects: pd.DataFrame, k: int) -> list[Head]:
    """The ``k`` heads of one stage's :func:`stage_effects` rows with the largest |effect|."""
    order = top_k_by_magnitude(effects["effect"].to_numpy(), k)
    rows = effects.iloc[order]
    return [
        (int(layer), int(head)) for layer, head in zip(rows["layer"], rows["head"], strict=True)
    ]


#: The engine's name of each ``reuse.positions`` mode.
ENGINE_POSITIONS = {"final": "read", "all": "all"}


def stage_receivers(
    stage: int, heads: Sequence[Head], n_heads: int, n_kv_heads: int
) -> list[Component]:
    """Receivers of path-patching stage ``stage`` (2 or more) given the previous stage's
    ``heads``: their queries at stage 2, their keys and values from stage 3 on. Under
    grouped-query attention a K/V head shared by two selected query heads appears once.
    """
    if stage < 2:
        raise ValueError("stage 1 has the final residual stream as its receiver")
    receivers = {}
    for layer, head in heads:
        if stage == 2:
            receivers[("q", layer, head)] = Component("q", layer, head)
            continue
        group = kv_group(head, n_heads, n_kv_heads)
        for kind in ("k", "v"):
            receivers[(kind, layer, group)] = Component(kind, layer, group)
    return list(receivers.values())


@dataclass
class CircuitRuns:
    """A task's clean/corrupted prompts prepared once for every path-patching stage and
    position mode: the runs, the metric, each prompt's clean and corrupted LD, and the
    engine's cache of the two runs."""

    runs: PatchingRuns
    metric: Metric
    clean_ld: np.ndarray
    corrupt_ld: np.ndarray
    runs_cache: RunCache


@torch.no_grad()
def prepare_runs(
    loaded, records: Sequence[TaskRecord], task: str, settings: ReuseSettings
) -> CircuitRuns:
    """The first ``settings.n_prompts`` records as clean (base) and corrupted (source)
    runs, corrupted -> clean as in Wang et al. 2022 and Merullo et al. 2023."""
    roles = task_roles(task)
    records = list(records)[: settings.n_prompts]
    # One batch whatever the prompts' lengths: path patching computes only the
    # positions that can change (see circuit_repro.engine.path_patching).
    runs, metric = runs_from_records(
        loaded.tokenizer, records, roles.counterfactual, direction="corrupt -> clean"
    )
    cached = cache_runs(loaded, runs, metric)
    return CircuitRuns(
        runs=runs,
        metric=metric,
        clean_ld=cached.base_metric.double().numpy(),
        corrupt_ld=cached.source_metric.double().numpy(),
        runs_cache=cached,
    )


def find_circuit(
    loaded,
    records: Sequence[TaskRecord],
    task: str,
    settings: ReuseSettings,
    progress: bool = True,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    positions: str | None = None,
    cached: CircuitRuns | None = None,
    stage_one: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Path patching by stage; one row per (stage, sender head, prompt).

    Base run: the clean prompt; source run: its corrupted counterfactual (the
    corrupted -> clean direction of Wang et al. 2022 and Merullo et al. 2023). The
    metric is LD = logit(answer) - logit(wrong answer) of the clean prompt. A stage's
    senders are the heads in layers before its earliest receiver, as in the authors'
    code (``truncate_to_max_layer``).

    Args:
        positions: ``final`` or ``all`` (default: ``settings.positions``).
        cached: The base and source runs of these prompts (:func:`prepare_runs`), to
            share between calls; computed here when None.
        stage_one: Stage-1 rows of the same prompts in the other position mode, used
            instead of recomputing them: into the final residual stream both modes are
            the same computation (see :func:`~circuit_repro.engine.path_patching.path_patching`).

    Returns:
        Columns ``positions, stage, layer, head, prompt, patched_ld, clean_ld,
        corrupt_ld, receivers, direction``. ``receivers`` names the stage's receivers
        ("resid_final" or "L{layer}.{q|k|v}{index}" joined by spaces). Use
        :func:`stage_effects` for the normalized effects and :func:`select_circuit` for
        the circuit.
    """
    positions = settings.positions if positions is None else positions
    cached = prepare_runs(loaded, records, task, settings) if cached is None else cached
    runs, metric, n_records = cached.runs, cached.metric, cached.runs.n_prompts
    clean_ld, corrupt_ld = cached.clean_ld, cached.corrupt_ld
    n_heads, n_kv_heads = loaded.n_heads, loaded.n_kv_heads
    all_heads = [
        Component("head", layer, h) for layer in range(loaded.n_layers) for h in range(n_heads)
    ]
    k = heads_per_stage(len(all_heads), settings.top_fraction)

    frames = []
    receivers = None
    for stage in range(1, settings.stages + 1):
        if receivers is None:
            senders, label = all_heads, "resid_final"
        else:
            earliest = min(r.layer for r in receivers)
            senders = [c for c in all_heads if c.layer < earliest]
            label = " ".join(f"L{r.layer}.{r.kind}{r.index}" for r in receivers)
        if not senders:
            break
        if stage == 1 and stage_one is not None:
            frame = stage_one.assign(positions=positions)
            frames.append(frame)
            receivers = stage_receivers(
                2, sorted(top_heads(stage_effects(frame), k)), n_heads, n_kv_heads
            )
            continue
        table = path_patching(
            loaded,
            runs,
            senders,
            receivers,
            metric,
            token_budget=token_budget,
            progress=progress,
            per_prompt=True,
            positions=ENGINE_POSITIONS[positions],
            cached=cached.runs_cache,
        )
        values = np.stack(table["per_prompt"].to_numpy())  # [senders, prompts]
        frame = pd.DataFrame(
            {
                "positions": positions,
                "stage": stage,
                "layer": np.repeat([c.layer for c in senders], n_records),
                "head": np.repeat([c.index for c in senders], n_records),
                "prompt": np.tile(np.arange(n_records), len(senders)),
                "patched_ld": values.reshape(-1),
                "clean_ld": np.tile(clean_ld, len(senders)),
                "corrupt_ld": np.tile(corrupt_ld, len(senders)),
                "receivers": label,
                "direction": "corrupt -> clean",
            }
        )
        frames.append(frame)
        selected = sorted(top_heads(stage_effects(frame), k))
        receivers = stage_receivers(stage + 1, selected, n_heads, n_kv_heads)
    return pd.concat(frames, ignore_index=True)


def stage_effects(table: pd.DataFrame, prompts: np.ndarray | None = None) -> pd.DataFrame:
    """Normalized effect of each (stage, head), averaged over ``prompts`` (all: None).

    ``effect = (mean patched LD - mean clean LD) / (mean corrupt LD - mean clean LD)``,
    the means over the same prompts (so a bootstrap resample renormalizes). ``table``
    holds one position mode (see :func:`in_mode`).
    """
    if "positions" in table and table["positions"].nunique() > 1:
        raise ValueError("stage_effects needs one position mode; select it with in_mode()")
    n_prompts = int(table["prompt"].max()) + 1
    weights = np.bincount(prompts, minlength=n_prompts) if prompts is not None else None
    grouped = []
    for (stage, layer, head), rows in table.groupby(["stage", "layer", "head"], sort=True):
        rows = rows.sort_values("prompt")
        w = np.ones(n_prompts) if weights is None else weights
        patched = np.average(rows["patched_ld"], weights=w)
        clean = np.average(rows["clean_ld"], weights=w)
        corrupt = np.average(rows["corrupt_ld"], weights=w)
        grouped.append((stage, layer, head, normalized_effect(patched, clean, corrupt)))
    return pd.DataFrame(grouped, columns=["stage", "layer", "head", "effect"])


def in_mode(table: pd.DataFrame, positions: str, depth: int | None = None) -> pd.DataFrame:
    """The rows of a :func:`find_circuit` table in one position mode, up to ``depth``
    stages (all: None)."""
    rows = table[table["positions"] == positions]
    if rows.empty:
        raise ValueError(f"the path-patching table has no rows in position mode {positions!r}")
    return rows if depth is None else rows[rows["stage"] <= depth]


def select_circuit(effects: pd.DataFrame, n_heads_total: int, top_fraction: float) -> set[Head]:
    """The circuit: union over stages of the top heads by absolute effect."""
    k = heads_per_stage(n_heads_total, top_fraction)
    circuit: set[Head] = set()
    for _, stage in effects.groupby("stage"):
        circuit |= set(top_heads(stage, k))
    return circuit


# ------------------------------------------------------------------ head classes


def attention_scores(
    loaded, records: Sequence[TaskRecord], task: str, batch_size: int = 16
) -> pd.DataFrame:
    """Mean attention of every head at the task's roles, over the clean prompts.

    Returns:
        One row per (layer, head): ``end_to_answer`` (final position -> answer tokens),
        ``end_to_repeated`` (final position -> the repeated token), ``repeated_to_first``
        (repeated token -> its first mention) and ``repeated_to_after_first`` (-> the
        token after it). Roles a task lacks are NaN. Attention to several tokens of a
        role is summed.
    """
    roles = task_roles(task)
    records = list(records)
    names = list(SCORE_CLASSES)
    scores = attention_at_roles(
        loaded,
        [r.prompt for r in records],
        [attention_role_pairs(r, roles) for r in records],
        names,
        batch_size,
    )
    rows = []
    for layer in range(loaded.n_layers):
        for head in range(loaded.n_heads):
            row = {"layer": layer, "head": head}
            for name in names:
                present = name == "end_to_answer" or roles.repeated is not None
                row[name] = float(scores[name][layer, head]) if present else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def classify_heads(
    effects: pd.DataFrame, attention: pd.DataFrame, threshold: float
) -> pd.DataFrame:
    """A class for every head from its attention scores and its stage-1 effect.

    The class is that of the largest role score (``end_to_answer`` -> mover,
    ``end_to_repeated`` -> inhibition, ``repeated_to_first`` -> duplicate-token,
    ``repeated_to_after_first`` -> induction) if it reaches ``threshold``, else
    "other". A mover whose stage-1 effect is negative (patching it in *raises* the
    clean LD) is a negative mover.

    Returns:
        ``attention`` with columns ``effect_stage{s}`` for each stage and ``class``.
    """
    table = attention.copy()
    for stage, rows in effects.groupby("stage"):
        table = table.merge(
            rows[["layer", "head", "effect"]].rename(columns={"effect": f"effect_stage{stage}"}),
            on=["layer", "head"],
            how="left",
        )
    scores = table[list(SCORE_CLASSES)].fillna(-np.inf)
    best = scores.idxmax(axis=1).map(SCORE_CLASSES)
    best[scores.max(axis=1) < threshold] = "other"
    negative = (best == "mover") & (table.get("effect_stage1", pd.Series(0.0)) < 0)
    best[negative] = "negative mover"
    table["class"] = best
    return table


def head_classes(classes: pd.DataFrame) -> dict[Head, str]:
    """``(layer, head) -> class`` from a :func:`classify_heads` table."""
    return {
        (int(layer), int(head)): name
        for layer, head, name in zip(
            classes["layer"], classes["head"], classes["class"], strict=True
        )
    }


def circuit_heads(classes: pd.DataFrame) -> set[Head]:
    """The heads a :func:`circuit_and_classes` table marks ``in_circuit``."""
    inside = classes[classes["in_circuit"].astype(bool)]
    return {
        (int(layer), int(head)) for layer, head in zip(inside["layer"], inside["head"], strict=True)
    }


def circuit_and_classes(
    loaded, records: Sequence[TaskRecord], task: str, settings: ReuseSettings, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rule ``reuse_circuit``: path-patching table (:func:`find_circuit`; for IOI and
    Colored Objects in both position modes when ``settings.compare_positions``) and one
    row per head with its attention scores, stage effects, class and ``in_circuit`` (all
    in ``settings.positions``)."""
    modes = [settings.positions]
    if settings.compare_positions and task in (REFERENCE_TASK, TARGET_TASK):
        modes += [mode for mode in POSITION_MODES if mode != settings.positions]
    cached = prepare_runs(loaded, records, task, settings)
    frames = [find_circuit(loaded, records, task, settings, progress, cached=cached)]
    for mode in modes[1:]:
        frames.append(
            find_circuit(
                loaded,
                records,
                task,
                settings,
                progress,
                positions=mode,
                cached=cached,
                stage_one=frames[0][frames[0]["stage"] == 1],
            )
        )
    table = pd.concat(frames, ignore_index=True)
    effects = stage_effects(in_mode(table, settings.positions))
    attention = attention_scores(loaded, list(records)[: settings.n_prompts], task)
    classes = classify_heads(effects, attention, settings.attention_threshold)
    circuit = select_circuit(effects, len(attention), settings.top_fraction)
    classes["in_circuit"] = [
        (int(layer), int(head)) in circuit
        for layer, head in zip(classes["layer"], classes["head"], strict=True)
    ]
    classes.insert(0, "task", task)
    return table, classes
