"""A checkpoint series as a whole (Park, Jeong and Kang 2025, sections 3-4 and A.6).

- :func:`cohorts`: per checkpoint, its circuit's heads that are new against the base
  (step 0) and those retained from it, grouped by the checkpoint where a head first
  appears (the paper's cohort plot, Fig. 2A).
- :func:`importance_change`: ``E = (I_post - I_pre) / (I_post + I_pre + eps)`` per
  head, and its status (emergent: in the final circuit only; retained; dropped).
- :func:`emergent_count_interval`: the number of emergent heads with a bootstrap CI
  over prompts (both circuits recomputed on each resample, paired by prompt).
- :func:`emergence_steps`: the checkpoint at which induction heads form and the one
  at which the loss on the repeat drops (the induction bump), and their gap.
- :func:`interventions`: zero-ablating and scaling the emergent heads against
  size-matched random heads (per layer), accuracy after each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from circuit_repro.engine.stats import percentile_interval
from circuit_repro.papers.sparks.checkpoint import circuit_heads

#: ``E``'s epsilon (the paper's Eq. 8).
EPS = 1e-6

Head = tuple[int, int]


def cohorts(circuits: Mapping[int, Mapping[Head, float]]) -> pd.DataFrame:
    """Per checkpoint step (the first is the base): circuit size, heads new against the
    base, heads retained from it, and per cohort (the step where a head first entered
    the circuit) how many of its heads are in this checkpoint's circuit."""
    steps = sorted(circuits)
    base = set(circuits[steps[0]])
    first_seen: dict[Head, int] = {}
    rows = []
    for step in steps:
        heads = set(circuits[step])
        for head in heads:
            first_seen.setdefault(head, step)
        row = {"step": step, "n_heads": len(heads), "new": len(heads - base),
               "retained": len(heads & base)}  # fmt: skip
        for cohort in steps:
            if cohort != steps[0]:
                row[f"cohort_{cohort}"] = sum(
                    1 for h in heads - base if first_seen.get(h) == cohort
                )
        rows.append(row)
    return pd.DataFrame(rows)


def importance_change(
    pre: Mapping[Head, float], post: Mapping[Head, float], n_layers: int, n_heads: int
) -> pd.DataFrame:
    """Every head's importance before and after, ``E`` and its status."""
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            before, after = pre.get((layer, head), 0.0), post.get((layer, head), 0.0)
            in_pre, in_post = (layer, head) in pre, (layer, head) in post
            status = (
                "emergent" if in_post and not in_pre
                else "retained" if in_post
                else "dropped" if in_pre
                else "absent"
            )  # fmt: skip
            rows.append({"layer": layer, "head": head, "importance_pre": before,
                         "importance_post": after,
                         "E": (after - before) / (after + before + EPS), "status": status})  # fmt: skip
    return pd.DataFrame(rows)


def emergent_count_interval(
    base: tuple[pd.DataFrame, np.ndarray],
    final: tuple[pd.DataFrame, np.ndarray],
    share: float,
    feeds: Mapping[str, list[str]],
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[int, float, float, np.ndarray]:
    """Emergent heads (in the final circuit, not in the base one) and a percentile
    bootstrap CI over prompts: each resample sums the same prompts' score shares for
    both checkpoints and rebuilds both circuits.

    Args:
        base, final: :func:`~circuit_repro.papers.sparks.checkpoint.circuit_scores`
            of each checkpoint, on the same prompts.

    Returns:
        ``(count, ci_low, ci_high, resampled counts)``.
    """

    def heads(edges: pd.DataFrame, scores: np.ndarray) -> set[Head]:
        return set(
            circuit_heads(
                list(edges["upstream"]),
                list(edges["downstream"]),
                scores,
                int(edges["n_edges"].iloc[0]),
                share,
                dict(feeds),
            )  # fmt: skip
        )

    def count(rows) -> int:
        b = heads(base[0], base[1][rows].sum(0))
        f = heads(final[0], final[1][rows].sum(0))
        return len(f - b)

    n = base[1].shape[0]
    if final[1].shape[0] != n:
        raise ValueError("the two checkpoints were scored on different numbers of prompts")
    observed = count(np.arange(n))
    rng = np.random.default_rng(seed)
    draws = np.array([count(rng.integers(n, size=n)) for _ in range(samples)])
    low, high = percentile_interval(draws, confidence)
    return observed, float(low), float(high), draws


def _first_reached(values: np.ndarray, threshold: float) -> int:
    """Index of the first value at or above ``threshold`` (-1: none)."""
    hits = np.flatnonzero(values >= threshold)
    return int(hits[0]) if hits.size else -1


#: Least in-context gain (nats) that counts as the model using the first copy.
MIN_GAIN = 0.5


def _halfway(gain: np.ndarray) -> int:
    """Index of the first checkpoint whose in-context gain (first-copy loss minus
    repeat loss) has risen halfway from the first checkpoint's to the last's (-1: the
    last gain is under :data:`MIN_GAIN`, the repeat never became easier)."""
    if gain[-1] < MIN_GAIN or gain[-1] <= gain[0]:
        return -1
    return int(np.flatnonzero(gain >= (gain[0] + gain[-1]) / 2)[0])


def emergence_steps(
    checkpoints: Sequence[Mapping],
    threshold: float,
    samples: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """When induction heads form and when the loss on the repeat drops.

    Per checkpoint the best head's induction score (mean over the repeated sequences)
    and the mean repeat loss; the induction step is the first checkpoint whose best
    head reaches ``threshold``, the loss-drop step the first whose repeat loss has
    fallen halfway from the first checkpoint's to the last's (the bump of Olsson et al.
    2022). Their gap, in checkpoints, is bootstrapped over the sequences (the same
    resample at every checkpoint).

    Args:
        checkpoints: Per checkpoint ``{"summary": {"step", "per_prompt": {"induction",
            "loss_first", "loss_repeat"}}}``, in order.

    Returns:
        Rows ``measure, value, ci_low, ci_high, n``: ``induction_step`` and
        ``loss_drop_step`` (training steps; NaN when never), ``gap_checkpoints``
        (loss-drop index minus induction index) and ``best_induction_final``.
    """
    steps = np.array([c["summary"]["step"] for c in checkpoints])
    induction = np.stack([np.asarray(c["summary"]["per_prompt"]["induction"]) for c in checkpoints])
    gains = np.stack(
        [np.asarray(c["summary"]["per_prompt"]["loss_first"])
         - np.asarray(c["summary"]["per_prompt"]["loss_repeat"]) for c in checkpoints]
    )  # fmt: skip
    n = gains.shape[1]

    def measure(rows):
        best = induction[:, rows].mean(1).max(-1)  # [checkpoint]
        return _first_reached(best, threshold), _halfway(gains[:, rows].mean(1)), best[-1]

    formed, dropped, final = measure(np.arange(n))
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(samples):
        f, d, _ = measure(rng.integers(n, size=n))
        if f >= 0 and d >= 0:
            gaps.append(d - f)
    low, high = percentile_interval(gaps, confidence) if gaps else (np.nan, np.nan)
    gap = dropped - formed if formed >= 0 and dropped >= 0 else np.nan
    return pd.DataFrame([
        {"measure": "induction_step", "value": steps[formed] if formed >= 0 else np.nan,
         "ci_low": np.nan, "ci_high": np.nan, "n": n},
        {"measure": "loss_drop_step", "value": steps[dropped] if dropped >= 0 else np.nan,
         "ci_low": np.nan, "ci_high": np.nan, "n": n},
        {"measure": "gap_checkpoints", "value": gap, "ci_low": low, "ci_high": high, "n": n},
        {"measure": "best_induction_final", "value": final, "ci_low": np.nan,
         "ci_high": np.nan, "n": n},
    ])  # fmt: skip


def top_emergent(changes: pd.DataFrame, n: int) -> list[Head]:
    """The ``n`` emergent heads whose importance grew most (largest ``E``, then the
    largest post-training importance)."""
    emergent = changes[changes["status"] == "emergent"].sort_values(
        ["E", "importance_post"], ascending=False, kind="stable"
    )
    return [(int(r.layer), int(r.head)) for r in emergent.head(n).itertuples()]


#: Columns of :func:`intervention_summary` (also when there is nothing to intervene on).
INTERVENTION_COLUMNS = ["model", "intervention", "clean", "emergent", "random",
                        "emergent_change", "random_change", "difference", "ci_low",
                        "ci_high", "n"]  # fmt: skip


def intervention_summary(
    accuracy: pd.DataFrame, samples: int, confidence: float, seed: int
) -> pd.DataFrame:
    """Per model and intervention: accuracy change of the emergent heads, mean change
    of the random sets, and emergent minus random with a bootstrap CI over prompts.

    Args:
        accuracy: ``model, intervention, set, draw, prompt, correct`` rows (``set``:
            ``none``, ``emergent`` or ``random``).
    """
    rows = []
    rng = np.random.default_rng(seed)
    for (model, intervention), part in accuracy.groupby(["model", "intervention"], sort=False):
        clean = part[part["set"] == "none"].sort_values("prompt")["correct"].to_numpy(float)
        emergent = part[part["set"] == "emergent"].sort_values("prompt")["correct"].to_numpy(float)
        random = (
            part[part["set"] == "random"].groupby("prompt")["correct"].mean().sort_index()
            .to_numpy(float)
        )  # fmt: skip
        if len(emergent) == 0:
            continue
        change, random_change = emergent - clean, random - clean
        n = len(clean)
        draws = np.array(
            [(change[i] - random_change[i]).mean() for i in rng.integers(n, size=(samples, n))]
        )
        low, high = percentile_interval(draws, confidence)
        rows.append({"model": model, "intervention": intervention, "clean": clean.mean(),
                     "emergent": emergent.mean(), "random": random.mean(),
                     "emergent_change": change.mean(), "random_change": random_change.mean(),
                     "difference": (change - random_change).mean(), "ci_low": low,
                     "ci_high": high, "n": n})  # fmt: skip
    return pd.DataFrame(rows, columns=INTERVENTION_COLUMNS)


def intervened_sets(
    heads: Sequence[Head], n_layers: int, n_heads: int, draws: int, seed: int
) -> list[list[Head]]:
    """The emergent heads and ``draws`` random sets matched to them per layer."""
    from circuit_repro.engine.circuits import random_head_sets

    return [list(heads), *random_head_sets(heads, n_layers, n_heads, draws, seed)]


def run_series(
    checkpoints: Sequence[Mapping], losses: pd.DataFrame, settings, n_layers: int, n_heads: int
) -> dict[str, pd.DataFrame]:
    """The series' tables from its checkpoints' outputs, in checkpoint order.

    Args:
        checkpoints: Per checkpoint ``{"heads", "edges", "shares", "summary"}`` as
            :func:`~circuit_repro.papers.sparks.checkpoint.analyse_checkpoint` returns.
        losses: The training run's per-step losses.

    Returns:
        ``checkpoints`` (one row per checkpoint: step, accuracy, losses, circuit size),
        ``heads`` (every checkpoint's heads: type scores, importance, circuit
        membership), ``cohorts``, ``changes`` (importance change of every head, base
        vs final),
        ``emergence`` and ``counts`` (emergent, retained and dropped heads, the first
        with its bootstrap CI).
    """
    feeds = checkpoints[0]["summary"].get("feeds")
    summary = pd.DataFrame(
        [
            {k: v for k, v in c["summary"].items() if k not in ("feeds", "per_prompt")}
            for c in checkpoints
        ]
    )
    emergence = emergence_steps(checkpoints, settings.head_type_threshold,
                                settings.bootstrap_samples, settings.confidence, settings.seed)  # fmt: skip
    out = {"checkpoints": summary, "emergence": emergence}
    if feeds is not None:
        circuits = {
            c["summary"]["step"]: circuit_heads(
                list(c["edges"]["upstream"]), list(c["edges"]["downstream"]),
                c["shares"].sum(0), int(c["edges"]["n_edges"].iloc[0]),
                settings.circuit_edges, feeds,
            )
            for c in checkpoints
        }  # fmt: skip
        summary["circuit_heads"] = [len(circuits[c["summary"]["step"]]) for c in checkpoints]
        out["heads"] = pd.concat(
            [
                c["heads"].assign(
                    step=c["summary"]["step"],
                    importance=[circuits[c["summary"]["step"]].get((r.layer, r.head), 0.0)
                                for r in c["heads"].itertuples()],
                    in_circuit=[(r.layer, r.head) in circuits[c["summary"]["step"]]
                                for r in c["heads"].itertuples()],
                )
                for c in checkpoints
            ],
            ignore_index=True,
        )  # fmt: skip
        steps = sorted(circuits)
        out["cohorts"] = cohorts(circuits)
        changes = importance_change(circuits[steps[0]], circuits[steps[-1]], n_layers, n_heads)
        out["changes"] = changes
        base, final = checkpoints[0], checkpoints[-1]
        count, low, high, _ = emergent_count_interval(
            (base["edges"], base["shares"]), (final["edges"], final["shares"]),
            settings.circuit_edges, feeds, settings.bootstrap_samples, settings.confidence,
            settings.seed,
        )  # fmt: skip
        statuses = changes["status"].value_counts()
        out["counts"] = pd.DataFrame(
            [{"measure": "emergent", "value": count, "ci_low": low, "ci_high": high,
              "n": base["shares"].shape[0]},
             *({"measure": s, "value": int(statuses.get(s, 0)), "ci_low": np.nan,
                "ci_high": np.nan, "n": base["shares"].shape[0]}
               for s in ("retained", "dropped")),
             {"measure": "base_circuit", "value": len(circuits[steps[0]]), "ci_low": np.nan,
              "ci_high": np.nan, "n": base["shares"].shape[0]}]
        )  # fmt: skip
    else:
        out["heads"] = pd.concat(
            [c["heads"].assign(step=c["summary"]["step"]) for c in checkpoints], ignore_index=True
        )
        out["cohorts"] = pd.DataFrame(columns=["step", "n_heads", "new", "retained"])
        out["changes"] = pd.DataFrame(columns=["layer", "head", "E", "status"])
        out["counts"] = pd.DataFrame(columns=["measure", "value", "ci_low", "ci_high", "n"])
    return out


def run_interventions(base, final, records, heads: Sequence[Head], settings) -> pd.DataFrame:
    """Zero ablation of ``heads`` in the final checkpoint, and their outputs scaled by
    each factor in both the base and the final checkpoint (the paper scales the
    emergent heads inside the baseline model), each beside size-matched random heads.

    Returns:
        One row per model, intervention, set (``none``, ``emergent``, ``random``),
        draw and prompt: ``correct``.
    """
    import torch

    from circuit_repro.engine.ablation import ablated_logits, ablation_hits
    from circuit_repro.engine.hooks import Component
    from circuit_repro.papers.sparks.checkpoint import task_runs

    rows = []
    runs, ids = task_runs(final.tokenizer, records)
    correct = torch.tensor([list(r.candidates).index(r.answer) for r in records])
    sets = intervened_sets(heads, final.n_layers, final.n_heads, settings.random_draws,
                           settings.seed)  # fmt: skip
    labelled = [("none", 0, [])] + [
        (
            "emergent" if i == 0 else "random",
            max(0, i - 1),
            [Component("head", layer, head) for layer, head in s],
        )
        for i, s in enumerate(sets)
    ]
    plans = [("final", final, "zero", 0.0)]
    plans += [(name, model, f"scale_{f:g}", f) for f in settings.scales
              for name, model in (("base", base), ("final", final))]  # fmt: skip
    for model_name, loaded, intervention, factor in plans:
        method = "zero" if intervention == "zero" else "scale"
        logits = ablated_logits(loaded, runs.base_tokens, runs.read_positions, ids,
                                [s for _, _, s in labelled], method, factor=factor)  # fmt: skip
        hits = ablation_hits(logits, correct)
        for (set_name, draw, _), set_hits in zip(labelled, hits, strict=True):
            for prompt, hit in enumerate(set_hits):
                rows.append({"model": model_name, "intervention": intervention, "set": set_name,
                             "draw": draw, "prompt": prompt, "correct": bool(hit)})  # fmt: skip
    return pd.DataFrame(rows)
