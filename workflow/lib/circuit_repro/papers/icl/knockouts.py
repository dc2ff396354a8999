"""Attention-edge knockouts of each ICL circuit step per range of layers (Cho et al. 2024,
§5, Tables 1-2), each against a size-matched random-edge control.

For every step (:data:`~circuit_repro.papers.icl.STEPS`) and range of layers, the
step's edges (:func:`~circuit_repro.papers.icl.edges.step_edges`) are knocked out in
every head of every layer of the range, and ICL accuracy is measured. The control knocks
out as many edges, drawn afresh per prompt and per layer, from the same query tokens
(:func:`~circuit_repro.engine.knockout.random_edges_like`): it removes as much of each
token's context, but not the step's. The paper's control draws its edges uniformly from
the whole causal mask; ours is stricter (docs/papers.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from circuit_repro.engine.knockout import KnockoutRuns, random_edges_like
from circuit_repro.engine.stats import bootstrap_ci
from circuit_repro.papers.icl import STEPS, IclSettings
from circuit_repro.papers.icl.curve import label_ids
from circuit_repro.papers.icl.edges import FIRST_KEY, layer_ranges, range_label, step_edges
from circuit_repro.tasks.records import TaskRecord

#: Variants measured per step and range.
VARIANTS = ("knockout", "control")


def run_knockouts(
    loaded, records: Sequence[TaskRecord], settings: IclSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every step's knockout and its control in every range of layers.

    Returns:
        ``per_prompt``: one row per prompt, step, range and variant (``clean`` once per
        prompt): ``id``, ``step``, ``range_index``, ``layers``, ``first_layer``,
        ``last_layer``, ``variant``, ``correct``, ``margin`` (correct label's logit
        minus the best other label's), ``n_edges`` (per layer);
        ``summary``: per step and range, accuracy after the knockout and after the
        control with CIs, the clean accuracy, and ``drop`` = control minus knockout
        accuracy (paired over prompts) with its CI.
    """
    tokenizer = loaded.tokenizer
    n_layers = loaded.n_layers
    ranges = layer_ranges(n_layers, settings.layer_ranges)
    tokens = [tokenizer(r.prompt)["input_ids"] for r in records]
    reads = [r.roles.end for r in records]
    ids, correct = label_ids(tokenizer, records)
    runs = KnockoutRuns(
        loaded, tokens, reads, [layers.start for layers in ranges], settings.batch_size
    )
    edges = [step_edges(r.roles) for r in records]
    rng = np.random.default_rng(settings.seed)

    def score(logits):
        right = logits[np.arange(len(records)), correct]
        others = logits.clone()
        others[np.arange(len(records)), correct] = float("-inf")
        return (logits.argmax(-1) == correct).numpy(), (right - others.max(-1).values).numpy()

    rows = []
    hits, margin = score(runs.logits([{}] * len(records), ids))
    for record, hit, m in zip(records, hits, margin, strict=True):
        rows.append(
            {"id": record.id, "step": "none", "range_index": -1, "layers": "none",
             "first_layer": -1, "last_layer": -1, "variant": "clean",
             "correct": bool(hit), "margin": float(m), "n_edges": 0}
        )  # fmt: skip
    jobs = [(step, i, layers) for step in STEPS for i, layers in enumerate(ranges)]
    for step, index, layers in tqdm(jobs, desc="knockouts", leave=False):
        plans = {
            "knockout": [{layer: e[step] for layer in layers} for e in edges],
            "control": [
                {
                    layer: random_edges_like(e[step], len(t), rng, first_key=FIRST_KEY)
                    for layer in layers
                }
                for e, t in zip(edges, tokens, strict=True)
            ],
        }
        for variant in VARIANTS:
            hits, margin = score(runs.logits(plans[variant], ids))
            for record, e, hit, m in zip(records, edges, hits, margin, strict=True):
                rows.append(
                    {
                        "id": record.id,
                        "step": step,
                        "range_index": index,
                        "layers": range_label(layers, n_layers),
                        "first_layer": layers.start,
                        "last_layer": layers.stop - 1,
                        "variant": variant,
                        "correct": bool(hit),
                        "margin": float(m),
                        "n_edges": len(e[step]),
                    }
                )
    per_prompt = pd.DataFrame(rows)
    return per_prompt, summarise_knockouts(per_prompt, settings)


def summarise_knockouts(per_prompt: pd.DataFrame, settings: IclSettings) -> pd.DataFrame:
    """Accuracy per step, range and variant with bootstrap CIs over prompts, and the
    paired drop (control minus knockout accuracy)."""
    ci = {"n_resamples": settings.bootstrap_samples, "confidence": settings.confidence}
    clean = per_prompt[per_prompt["variant"] == "clean"].set_index("id")["correct"]
    rows = []
    measured = per_prompt[per_prompt["variant"] != "clean"]
    for (step, index), group in measured.groupby(["step", "range_index"], sort=False):
        wide = group.pivot(index="id", columns="variant", values="correct").astype(float)
        drop = (wide["control"] - wide["knockout"]).to_numpy()
        first = group.iloc[0]
        row = {
            "step": step,
            "range_index": int(index),
            "layers": first["layers"],
            "first_layer": int(first["first_layer"]),
            "last_layer": int(first["last_layer"]),
            "n": len(wide),
            "edges_per_layer": float(group["n_edges"].mean()),
            "clean_accuracy": float(clean.loc[wide.index].mean()),
        }
        for variant in VARIANTS:
            values = wide[variant].to_numpy()
            low, high = bootstrap_ci(values, seed=settings.seed, **ci)
            row |= {
                f"{variant}_accuracy": float(values.mean()),
                f"{variant}_ci_low": low,
                f"{variant}_ci_high": high,
            }
        low, high = bootstrap_ci(drop, seed=settings.seed, **ci)
        row |= {"drop": float(drop.mean()), "drop_ci_low": low, "drop_ci_high": high}
        rows.append(row)
    return pd.DataFrame(rows)
