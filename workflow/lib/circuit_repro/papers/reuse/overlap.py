"""How many heads two tasks' circuits share (Merullo et al. 2023, §4: 78% for IOI and
Colored Objects in GPT-2 medium), with a bootstrap CI over prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuit_repro.engine.circuits import overlap, top_k_by_magnitude
from circuit_repro.engine.metrics import normalized_effect
from circuit_repro.engine.stats import bootstrap, percentile_interval
from circuit_repro.papers.reuse import REFERENCE_TASK, ReuseSettings
from circuit_repro.papers.reuse.circuit import (
    CLASSES,
    Head,
    head_classes,
    heads_per_stage,
    in_mode,
)


class _EffectMatrix:
    """A :func:`~circuit_repro.papers.reuse.circuit.find_circuit` table as arrays, for
    fast resampling: per (stage, head) the per-prompt ``patched - clean`` LD, and per
    prompt ``corrupt - clean``."""

    def __init__(self, table: pd.DataFrame):
        if "positions" in table and table["positions"].nunique() > 1:
            raise ValueError("an overlap compares circuits of one position mode; use in_mode()")
        table = table.sort_values(["stage", "layer", "head", "prompt"])
        keys = list(table[["stage", "layer", "head"]].drop_duplicates().itertuples(index=False))
        self.keys = [tuple(int(x) for x in key) for key in keys]
        self.n_prompts = int(table["prompt"].max()) + 1
        self.delta = (
            (table["patched_ld"] - table["clean_ld"])
            .to_numpy()
            .reshape(len(self.keys), self.n_prompts)
        )
        first = table[table["stage"] == self.keys[0][0]]
        first = first[(first["layer"] == self.keys[0][1]) & (first["head"] == self.keys[0][2])]
        self.gap = (first["corrupt_ld"] - first["clean_ld"]).to_numpy()
        self.stages = np.array([key[0] for key in self.keys])

    def circuit(self, prompts: np.ndarray, k: int) -> set[Head]:
        """Top ``k`` heads per stage by |normalized effect| over ``prompts``."""
        effect = normalized_effect(
            self.delta[:, prompts].mean(axis=1), 0.0, self.gap[prompts].mean()
        )
        selected = set()
        for stage in np.unique(self.stages):
            index = np.flatnonzero(self.stages == stage)
            top = index[top_k_by_magnitude(effect[index], k)]
            selected |= {(self.keys[i][1], self.keys[i][2]) for i in top}
        return selected


def bootstrap_overlap(
    reference: pd.DataFrame,
    other: pd.DataFrame,
    n_heads_total: int,
    settings: ReuseSettings,
    classes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Overlap of two tasks' circuits with a percentile-bootstrap CI over prompts.

    Prompts of each task are resampled independently; each resample recomputes every
    stage's normalized effects, reselects the top heads and recomputes the overlap.
    Each stage's receivers stay those chosen on all prompts (re-running path patching
    per resample would multiply the cost by the number of resamples).

    Args:
        reference, other: ``find_circuit`` tables (e.g. IOI and Colored Objects).
        classes: ``reference``'s head-class table; adds one row per class: the fraction
            of the reference circuit's heads of that class that are also in the other
            circuit. Resamples whose reference circuit has no head of the class are
            left out of that class's interval (counting them as 0 would bias it down).

    Returns:
        Rows ``class`` ("all" or a class), ``overlap``, ``ci_low``, ``ci_high``,
        ``shared``, ``union`` (for per-class rows: heads of the class in the reference
        circuit), ``n_prompts`` (the smaller task's prompts) and ``n_resamples`` (the
        resamples behind the interval).
    """
    a, b = _EffectMatrix(reference), _EffectMatrix(other)
    k = heads_per_stage(n_heads_total, settings.top_fraction)
    lookup = head_classes(classes) if classes is not None else {}

    def measures(circuit_a: set[Head], circuit_b: set[Head]) -> dict[str, tuple[float, int, int]]:
        result = {"all": overlap(circuit_a, circuit_b)}
        for name in CLASSES if classes is not None else ():
            members = {h for h in circuit_a if lookup.get(h) == name}
            if members:
                shared = len(members & circuit_b)
                result[name] = (shared / len(members), shared, len(members))
        return result

    full = measures(a.circuit(np.arange(a.n_prompts), k), b.circuit(np.arange(b.n_prompts), k))

    def statistic(prompts_a: np.ndarray, prompts_b: np.ndarray) -> list[float]:
        resampled = measures(a.circuit(prompts_a, k), b.circuit(prompts_b, k))
        # A resample whose reference circuit has no head of a class says nothing about
        # that class's overlap: NaN, left out of that class's interval.
        return [resampled.get(name, (np.nan, 0, 0))[0] for name in full]

    samples = bootstrap(
        statistic, (a.n_prompts, b.n_prompts), settings.bootstrap_samples, settings.seed
    )
    rows = []
    for column, (name, (value, shared, union)) in enumerate(full.items()):
        kept = samples[:, column][np.isfinite(samples[:, column])]
        low, high = percentile_interval(kept, settings.confidence)
        rows.append(
            {
                "class": name,
                "overlap": value,
                "ci_low": low,
                "ci_high": high,
                "shared": shared,
                "union": union,
                "n_prompts": min(a.n_prompts, b.n_prompts),
                "n_resamples": len(kept),
            }
        )
    return pd.DataFrame(rows)


def reported_depths(stages: int) -> list[int]:
    """Depths whose overlaps are reported: 2 (the previous default) and the full depth."""
    return sorted({min(2, stages), stages})


def overlap_table(
    tables: dict[str, pd.DataFrame],
    reference_classes: pd.DataFrame,
    settings: ReuseSettings,
    reference: str = REFERENCE_TASK,
) -> pd.DataFrame:
    """Rule ``reuse_overlap``: the reference circuit against every other task's, overall
    and per reference class, with bootstrap CIs (:func:`bootstrap_overlap`), in every
    position mode both tables have, at depth 2 and at the full depth.

    Returns:
        Rows ``positions``, ``depth``, ``primary`` (the configured mode at full depth:
        the rows the claims use), ``pair`` ("ioi|colored_objects"), ``class``,
        ``overlap``, ``ci_low``, ``ci_high``, ``shared``, ``union``, ``n_prompts``,
        ``n_resamples``.
    """
    n_heads_total = len(reference_classes)
    modes = list(dict.fromkeys(tables[reference]["positions"]))
    frames = []
    for positions in modes:
        for depth in reported_depths(settings.stages):
            for task, table in tables.items():
                if task == reference or positions not in set(table["positions"]):
                    continue
                frame = bootstrap_overlap(
                    in_mode(tables[reference], positions, depth),
                    in_mode(table, positions, depth),
                    n_heads_total,
                    settings,
                    reference_classes,
                )
                frame.insert(0, "pair", f"{reference}|{task}")
                frame.insert(
                    0, "primary", positions == settings.positions and depth == settings.stages
                )
                frame.insert(0, "depth", depth)
                frame.insert(0, "positions", positions)
                frames.append(frame)
    return pd.concat(frames, ignore_index=True)
