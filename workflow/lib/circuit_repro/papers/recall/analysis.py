"""Locating a recall circuit and a reasoning circuit, ablating each, and the 2x2 table
(Fartale et al. 2025, "Disentangling Recall and Reasoning in Transformer Models").

Each family (recall, reasoning) is patched against its ``swap`` counterfactual (one
token changed, the answer changed), corrupt -> clean: a component matters when putting
the counterfactual's value in the clean run lowers the logit difference between the
clean and the counterfactual answer.

- Layer x position maps: exact patching of the residual stream and of each MLP's output
  at every position (:func:`~circuit_repro.engine.patching.patching_sweep`), and of each
  MLP's output at all positions at once (which ranks the layers).
- Heads: attribution patching of every head (all positions), checked against exact
  patching on a seeded sample of heads (Spearman correlation).
- Neurons: attribution patching of every neuron of the family's top MLP layers.

A family's circuit at each level is its top MLP layers, its top heads, and its top
neurons in those layers. Ablating a circuit (mean over the task's prompts by default)
and size-matched random sets (per layer, seeded) gives per level the 2x2 table of
accuracy drops (ablate recall / reasoning x measure recall / reasoning), bootstrapped
over prompt pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.ablation import ablated_logits, ablation_hits
from circuit_repro.engine.attribution import attribution_patching, compare_with_exact
from circuit_repro.engine.circuits import random_component_sets
from circuit_repro.engine.hooks import Component, all_components, model_dims
from circuit_repro.engine.metrics import LogitDiffMetric, normalized_effect
from circuit_repro.engine.patching import PatchingRuns, patching_sweep, prompt_metric
from circuit_repro.engine.stats import bootstrap, percentile_interval
from circuit_repro.papers.recall import FAMILIES, LEVELS, RecallSettings
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.records import TaskRecord

#: Output tables, by name (``results/recall/<model>/<name>.csv``).
TABLES = ("maps", "heads", "validation", "circuits", "ablations", "table", "contrasts")


@dataclass
class FamilyRuns:
    """One family's clean prompts patched with their swap counterfactuals."""

    runs: PatchingRuns
    token_ids: torch.Tensor  # [n, 2]: clean answer, counterfactual answer
    answers: LogitDiffMetric  # the same logit difference over the whole vocabulary


def family_runs(tokenizer, records: Sequence[TaskRecord]) -> FamilyRuns:
    clean = torch.tensor([tokenizer(r.prompt)["input_ids"] for r in records])
    swapped = torch.tensor(
        [tokenizer(r.counterfactual("swap").prompt)["input_ids"] for r in records]
    )
    answer = torch.tensor([single_token_id(tokenizer, r.answer) for r in records])
    other = torch.tensor(
        [single_token_id(tokenizer, r.counterfactual("swap").answer) for r in records]
    )
    runs = PatchingRuns(
        clean, swapped, torch.tensor([r.end for r in records]), direction="corrupt -> clean"
    )
    return FamilyRuns(runs, torch.stack([answer, other], 1), LogitDiffMetric(answer, other))


def _columns_metric(n: int) -> LogitDiffMetric:
    """The logit difference when only the two answers' logits are computed."""
    return LogitDiffMetric(torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long))


def _first(runs: PatchingRuns, n: int) -> PatchingRuns:
    """The first ``n`` prompts of ``runs``."""
    rows = slice(0, min(n, runs.n_prompts))
    return PatchingRuns(runs.base_tokens[rows], runs.source_tokens[rows],
                        runs.read_positions[rows], direction=runs.direction)  # fmt: skip


def patching_maps(loaded, family: FamilyRuns, n_prompts: int) -> pd.DataFrame:
    """Exact corrupt -> clean patching of ``resid_pre`` and ``mlp_out`` at every position
    and of ``mlp_out`` at all positions, on the first ``n_prompts`` prompts."""
    sub = _first(family.runs, n_prompts)
    ids = family.token_ids[: sub.n_prompts]
    metric = _columns_metric(sub.n_prompts)
    positions = range(sub.base_tokens.shape[1])
    components = (
        all_components(loaded.bridge, "resid_pre", positions)
        + all_components(loaded.bridge, "mlp_out", positions)
        + all_components(loaded.bridge, "mlp_out")
    )
    table = patching_sweep(loaded, sub, components, metric, progress=False, token_ids=ids)
    with torch.no_grad():
        clean = prompt_metric(loaded, sub.base_tokens, sub, metric, token_ids=ids).double().mean()
        corrupt = (
            prompt_metric(loaded, sub.source_tokens, sub, metric, token_ids=ids).double().mean()
        )
    table["normalized_effect"] = normalized_effect(table["value"], float(clean), float(corrupt))
    return table[["kind", "layer", "position", "value", "normalized_effect"]]


def split_pairs(
    records: Sequence[TaskRecord], ablation_pairs: int
) -> tuple[list[TaskRecord], list[TaskRecord]]:
    """``(locate, ablate)``: the prompts circuits are selected on and the disjoint prompt
    pairs they are ablated on (the first ``ablation_pairs`` pairs), so that a circuit is
    never judged on the prompts that chose it."""
    pair_ids = sorted({r.fields["pair_id"] for r in records})
    held_out = set(pair_ids[:ablation_pairs])
    if len(held_out) == len(pair_ids):
        raise ValueError(
            f"{len(pair_ids)} prompt pairs leave none to locate circuits on after "
            f"{ablation_pairs} ablation pairs; lower recall.ablation_pairs"
        )
    locate_on = [r for r in records if r.fields["pair_id"] not in held_out]
    return locate_on, [r for r in records if r.fields["pair_id"] in held_out]


def component_effects(loaded, family: FamilyRuns, components: Sequence[Component]) -> pd.DataFrame:
    """Attribution patching of ``components`` on one family (every prompt), with
    ``effect``: the share of the clean logit difference each is estimated to carry
    (minus its corrupt -> clean score over the clean logit difference)."""
    scored = attribution_patching(loaded, family.runs, components, family.answers, batch_size=16)
    scored["effect"] = -scored["score"] / float(scored["base_value"].iloc[0])
    return scored


def selection_scores(effects: Mapping[str, pd.Series], family: str, selection: str) -> pd.Series:
    """What a family's circuit is ranked by: its components' effect on the family minus
    their effect on the other family (``specific``), or on the family alone (``own``)."""
    if selection == "specific":
        return effects[family] - effects[FAMILIES[1 - FAMILIES.index(family)]]
    return effects[family]


def locate(loaded, records: Sequence[TaskRecord], settings: RecallSettings):
    """Both families' maps, head and neuron scores, validation and circuits, on the
    prompt pairs not held out for the ablations.

    Components are ranked by their effect on their own family (``selection: own``) or by
    that effect minus their effect on the other family (``specific``: what the family
    needs and the other does not). Effects are shares of the clean logit difference lost
    when the counterfactual's value is patched in.
    """
    tokenizer = loaded.tokenizer
    records = split_pairs(records, settings.ablation_pairs)[0]
    n_heads_total = loaded.n_layers * loaded.bridge.cfg.n_heads
    n_circuit_heads = max(2, round(settings.circuit_heads * n_heads_total))
    # At most half the layers, so that random layers can match the circuit's size.
    n_layers = min(settings.circuit_layers, max(1, loaded.n_layers // 2))
    runs = {
        f: family_runs(tokenizer, [r for r in records if r.fields["family"] == f]) for f in FAMILIES
    }
    maps, head_effects, layer_effects, validation = [], {}, {}, []
    head_components = all_components(loaded.bridge, "head")
    for f in FAMILIES:
        table = patching_maps(loaded, runs[f], settings.locate_prompts)
        maps.append(table.assign(family=f))
        rows = table[(table["kind"] == "mlp_out") & table["position"].isna()]
        layer_effects[f] = rows.set_index("layer")["normalized_effect"]
        head_effects[f] = component_effects(loaded, runs[f], head_components)
        check = compare_with_exact(
            loaded, _first(runs[f].runs, 2 * settings.locate_prompts), head_components,
            runs[f].answers, settings.validation_heads, settings.seed,
        )  # fmt: skip
        validation.append({"family": f, **check})

    def ranking(effects: dict, f: str):
        return selection_scores(effects, f, settings.selection)

    circuits, heads = {}, []
    for f in FAMILIES:
        head_rank = ranking({g: head_effects[g]["effect"] for g in FAMILIES}, f)
        top_heads = head_rank.nlargest(n_circuit_heads).index
        table = head_effects[f][["layer", "index", "score", "effect"]].copy()
        table["rank_score"] = head_rank
        table["in_circuit"] = table.index.isin(top_heads)
        heads.append(table.assign(family=f))
        top_layers = sorted(int(x) for x in ranking(layer_effects, f).nlargest(n_layers).index)
        neuron_components = [
            c for c in all_components(loaded.bridge, "neuron") if c.layer in set(top_layers)
        ]
        neuron_effects = {
            g: component_effects(loaded, runs[g], neuron_components)["effect"] for g in FAMILIES
        }
        top_neurons = ranking(neuron_effects, f).nlargest(settings.circuit_neurons).index
        circuits[f] = {
            "layer": [Component("mlp_out", layer) for layer in top_layers],
            "head": sorted(
                Component(
                    "head",
                    int(head_effects[f].loc[i, "layer"]),
                    int(head_effects[f].loc[i, "index"]),
                )
                for i in top_heads
            ),
            "neuron": sorted(
                Component("neuron", neuron_components[i].layer, neuron_components[i].index)
                for i in top_neurons
            ),
        }
    circuit_rows = [
        {"family": family, "level": level, "kind": c.kind, "layer": c.layer, "index": c.index}
        for family, levels in circuits.items()
        for level, components in levels.items()
        for c in components
    ]
    return (
        pd.concat(maps, ignore_index=True),
        pd.concat(heads, ignore_index=True),
        pd.DataFrame(validation),
        circuits,
        pd.DataFrame(circuit_rows),
    )


def run_ablations(loaded, records: Sequence[TaskRecord], circuits, settings: RecallSettings):
    """Every circuit and its random controls ablated on every prompt of both families.

    Returns:
        ``ablations``: one row per level, ablated set (``none``, ``recall``,
        ``reasoning``, ``random_recall``, ``random_reasoning``), draw and prompt:
        ``correct``; and the sets' sizes.
    """
    tokenizer = loaded.tokenizer
    records = split_pairs(records, settings.ablation_pairs)[1]
    tokens = torch.tensor([tokenizer(r.prompt)["input_ids"] for r in records])
    reads = torch.tensor([r.end for r in records])
    ids = torch.tensor([[single_token_id(tokenizer, c) for c in r.candidates] for r in records])
    correct = torch.tensor([list(r.candidates).index(r.answer) for r in records])
    rows = []
    for level in LEVELS:
        sets, labels = [[]], [("none", 0)]
        for index, family in enumerate(FAMILIES):
            circuit = circuits[family][level]
            sets.append(circuit)
            labels.append((family, 0))
            draws = random_component_sets(circuit, model_dims(loaded.bridge), settings.random_draws,
                                          settings.seed + 1000 * index, crowded="whole_layer")  # fmt: skip
            sets.extend(draws)
            labels.extend((f"random_{family}", d) for d in range(len(draws)))
        logits = ablated_logits(loaded, tokens, reads, ids, sets, settings.ablation, tokens,
                                seed=settings.seed)  # fmt: skip
        hits = ablation_hits(logits, correct)
        for (ablated, draw), set_hits, components in zip(labels, hits, sets, strict=True):
            for record, hit in zip(records, set_hits, strict=True):
                rows.append({"level": level, "ablated": ablated, "draw": draw, "size": len(components),
                             "id": record.id, "pair_id": record.fields["pair_id"],
                             "family": record.fields["family"], "correct": bool(hit)})  # fmt: skip
    return pd.DataFrame(rows)


def _drops(ablations: pd.DataFrame, level: str) -> tuple[np.ndarray, dict[str, np.ndarray], list]:
    """Per pair and family, clean accuracy minus accuracy after each ablation:
    ``{ablated: [pairs, 2 families]}`` (random sets averaged over draws)."""
    at = ablations[ablations["level"] == level]
    pairs = sorted(at["pair_id"].unique())
    hits = (
        at.groupby(["ablated", "pair_id", "family"])["correct"].mean().unstack("family")
        .reindex(columns=list(FAMILIES))
    )  # fmt: skip
    clean = hits.loc["none"].reindex(pairs).to_numpy()
    drops = {
        name: clean - hits.loc[name].reindex(pairs).to_numpy()
        for name in hits.index.get_level_values(0).unique()
        if name != "none"
    }
    return clean, drops, pairs


def two_by_two(
    ablations: pd.DataFrame, settings: RecallSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per level, the 2x2 table of accuracy drops with CIs (bootstrap over prompt pairs),
    the random controls, and the contrasts the claims judge.

    Contrasts per level: ``<family>_selective`` (drop of its own ability minus the
    other's when its circuit is ablated), ``<family>_vs_random`` (own drop minus the
    matched random sets' mean own drop), ``interaction`` (the sum of the two
    selectivities) and ``double`` (the smaller selectivity: a double dissociation when
    its CI lies above zero); and ``interaction_difference`` (head minus neuron
    interaction, on paired resamples).
    """
    table_rows, contrast_rows = [], []
    # The same seed and number of pairs draw the same resamples at every level, so the
    # levels' bootstrap samples are paired.
    interactions, interaction_samples = {}, {}
    confidence, n_boot, seed = settings.confidence, settings.bootstrap_samples, settings.seed
    for level in LEVELS:
        clean, drops, pairs = _drops(ablations, level)

        def stats(rows, drops=drops, clean=clean):
            out = {}
            for ablated in ("recall", "reasoning", "random_recall", "random_reasoning"):
                for f, family in enumerate(FAMILIES):
                    out[(ablated, family)] = drops[ablated][rows, f].mean()
            for f, family in enumerate(FAMILIES):
                out[("clean", family)] = clean[rows, f].mean()
            out["recall_selective"] = out[("recall", "recall")] - out[("recall", "reasoning")]
            out["reasoning_selective"] = (
                out[("reasoning", "reasoning")] - out[("reasoning", "recall")]
            )
            out["interaction"] = out["recall_selective"] + out["reasoning_selective"]
            # A double dissociation needs both selectivities above zero, not only their sum.
            out["double"] = min(out["recall_selective"], out["reasoning_selective"])
            out["recall_vs_random"] = out[("recall", "recall")] - out[("random_recall", "recall")]
            out["reasoning_vs_random"] = (
                out[("reasoning", "reasoning")] - out[("random_reasoning", "reasoning")]
            )
            return out

        point = stats(np.arange(len(pairs)))
        interactions[level] = point["interaction"]
        keys = list(point)
        samples = bootstrap(
            lambda r, keys=keys, stats=stats: np.array([stats(r)[k] for k in keys]),
            [len(pairs)], n_boot, seed,
        )  # fmt: skip
        interaction_samples[level] = samples[:, keys.index("interaction")]
        for k, key in enumerate(keys):
            low, high = percentile_interval(samples[:, k], confidence)
            if isinstance(key, tuple) and key[0] != "clean":
                table_rows.append({"level": level, "ablated": key[0], "measured": key[1],
                                   "drop": float(point[key]), "ci_low": low, "ci_high": high,
                                   "clean_accuracy": float(point[("clean", key[1])]),
                                   "n_pairs": len(pairs)})  # fmt: skip
            elif isinstance(key, tuple):
                continue
            else:
                contrast_rows.append({"level": level, "measure": key, "value": float(point[key]),
                                      "ci_low": low, "ci_high": high, "n": len(pairs)})  # fmt: skip
    difference = interaction_samples["head"] - interaction_samples["neuron"]
    low, high = percentile_interval(difference, confidence)
    contrast_rows.append({"level": "head_vs_neuron", "measure": "interaction_difference",
                          "value": interactions["head"] - interactions["neuron"],
                          "ci_low": low, "ci_high": high, "n": contrast_rows[-1]["n"]})  # fmt: skip
    return pd.DataFrame(table_rows), pd.DataFrame(contrast_rows)


def overlap(circuits) -> dict[str, float]:
    """Jaccard overlap of the two families' circuits per level."""
    out = {}
    for level in LEVELS:
        a, b = set(circuits["recall"][level]), set(circuits["reasoning"][level])
        out[level] = len(a & b) / max(1, len(a | b))
    return out


def run_recall(
    loaded, records: Sequence[TaskRecord], settings: RecallSettings
) -> dict[str, pd.DataFrame]:
    """Everything the paper measures on one model: ``{table name: table}`` (:data:`TABLES`)."""
    maps, heads, validation, circuits, circuit_rows = locate(loaded, records, settings)
    ablations = run_ablations(loaded, records, circuits, settings)
    table, contrasts = two_by_two(ablations, settings)
    shared = overlap(circuits)
    n_pairs = int(contrasts["n"].iloc[0])
    contrasts = pd.concat(
        [contrasts, pd.DataFrame(
            [{"level": level, "measure": "overlap", "value": value, "ci_low": np.nan,
              "ci_high": np.nan, "n": n_pairs} for level, value in shared.items()]
        )],
        ignore_index=True,
    )  # fmt: skip
    return {
        "maps": maps,
        "heads": heads,
        "validation": validation,
        "circuits": circuit_rows,
        "ablations": ablations,
        "table": table,
        "contrasts": contrasts,
    }
