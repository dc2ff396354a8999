"""Every method's scores on one task and the faithfulness of their circuits (MIB's
circuit-localisation protocol, Mueller et al. 2025).

The base run is the task's clean prompt and the counterfactual supplies the ablated
values (IOI: three fresh names, MIB's ABC counterfactual; MCQA: the option labels
permuted so that the answer letter changes), so ``m(N)`` is the clean logit difference
and ``m(empty)`` about the counterfactual's. Methods:

- ``eap`` and ``eap-ig``: edge attribution patching and its integrated-gradients form
  (:func:`~circuit_repro.engine.edges.edge_attribution`), the gradient of the clean
  run's metric times the counterfactual-minus-clean output of each edge's writer;
- ``atp``: node-level attribution patching
  (:func:`~circuit_repro.engine.attribution.attribution_patching`) of every upstream
  node: the embedding, each head's ``z`` (or a whole attention layer's output where a
  norm follows it), each MLP's output; its circuits are the edges between top nodes;
- ``exact``: each edge patched alone (:func:`~circuit_repro.engine.edges.exact_edge_patching`).
  MIB patches every edge; on a CPU that is out of reach for the default models (about
  57,000 edges for SmolLM2-135M), so ``exact_edges`` of them, the top ones by |EAP-IG|,
  are patched and ranked by their exact effect, above the other edges in EAP-IG's order;
- ``random``: seeded random edge scores, the size-matched control of every curve.

Every circuit of every method, plus the empty and the full circuit, is evaluated in one
batched call (:func:`~circuit_repro.engine.faithfulness.circuit_prompt_metrics`); the
per-prompt metrics are kept so that the curves, the areas and the differences between
methods are bootstrapped over the same prompts (:func:`method_areas`,
:func:`area_difference`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.attribution import attribution_patching
from circuit_repro.engine.edges import Graph, edge_attribution, exact_edge_patching
from circuit_repro.engine.faithfulness import (
    circuit_prompt_metrics,
    faithfulness_and_areas,
    node_circuit_masks,
    top_edge_masks,
)
from circuit_repro.engine.hooks import Component
from circuit_repro.engine.metrics import Metric
from circuit_repro.engine.patching import PatchingRuns, runs_from_records
from circuit_repro.engine.stats import bootstrap, percentile_interval
from circuit_repro.papers.circuits import COUNTERFACTUALS, METHODS, PERCENTAGES
from circuit_repro.tasks.records import TaskRecord

#: Methods whose circuits are counted in nodes rather than edges.
NODE_METHODS = ("atp",)


def task_runs(tokenizer, records: Sequence[TaskRecord], task: str) -> tuple[PatchingRuns, Metric]:
    """Clean prompts as the base, the task's MIB-style counterfactual as the source, and
    the clean answer's logit difference as the metric."""
    return runs_from_records(tokenizer, records, COUNTERFACTUALS[task], "corrupt -> clean")


def node_component(node) -> Component:
    """The activation an upstream graph node writes, as an AtP component."""
    if node.kind == "input":
        return Component("resid_pre", 0)
    if node.kind == "head":
        return Component("head", node.layer, node.index)
    if node.kind == "attn":
        return Component("attn_out", node.layer)
    return Component("mlp_out", node.layer)


def node_attribution(
    loaded, runs: PatchingRuns, metric: Metric, graph: Graph, batch_size: int | None = 16
) -> pd.DataFrame:
    """AtP score of every upstream node of ``graph`` (``node, score``): the first-order
    effect of patching the node's output (a head's ``z``: its output up to the fixed
    ``W_O``) at every position."""
    components = [node_component(node) for node in graph.upstream]
    table = attribution_patching(loaded, runs, components, metric, batch_size=batch_size)
    return pd.DataFrame({"node": [n.name for n in graph.upstream], "score": table["score"]})


def random_edge_scores(graph: Graph, seed: int) -> pd.DataFrame:
    """Seeded random scores for every edge: its top-n circuits are random edge sets of
    each size, the control every method's curve is compared with."""
    edges = graph.edges()
    values = np.random.default_rng(seed).random(len(edges))
    return pd.DataFrame(
        {"upstream": [u for u, _ in edges], "downstream": [v for _, v in edges], "score": values}
    )


def exact_over_candidates(
    loaded, runs: PatchingRuns, metric: Metric, graph: Graph, ranking: pd.DataFrame, n_edges: int
) -> pd.DataFrame:
    """Exact patching of the top ``n_edges`` edges of ``ranking`` by |score| (every edge
    when ``n_edges`` is 0 or at least the graph's), re-ranked by their exact effect.

    Edges not patched keep ``ranking``'s order below every patched edge that moved the
    metric: their scores are ``ranking``'s scaled to half the smallest nonzero exact
    magnitude. Column ``patched`` says which edges were patched.
    """
    order = ranking["score"].abs().sort_values(ascending=False, kind="stable").index
    if n_edges <= 0 or n_edges >= len(ranking):
        n_edges = len(ranking)
    chosen = ranking.loc[order[:n_edges]]
    exact = exact_edge_patching(
        loaded,
        runs,
        metric,
        graph=graph,
        edges=list(zip(chosen.upstream, chosen.downstream, strict=False)),
    )
    table = ranking[["upstream", "downstream", "score"]].copy()
    table["patched"] = False
    rest = table.index.difference(chosen.index)
    magnitudes = exact["score"].abs()
    floor = magnitudes[magnitudes > 0].min() if (magnitudes > 0).any() else 1.0
    largest = table.loc[rest, "score"].abs().max() if len(rest) else 0.0
    if largest > 0:
        table.loc[rest, "score"] = table.loc[rest, "score"] * (floor / 2 / largest)
    table.loc[chosen.index, "score"] = exact["score"].to_numpy()
    table.loc[chosen.index, "patched"] = True
    return table


@dataclass
class TaskEvaluation:
    """What :func:`evaluate_task` computed for one task.

    Attributes:
        edge_scores: Method -> edge table (``upstream, downstream, score``), for the
            edge-level methods.
        node_scores: Method -> node table (``node, score``), for the node-level ones.
        prompt_metrics: One row per method and size (``method, percentage, count``) and
            the rows ``empty`` and ``full``, with the metric of every prompt in columns
            ``p0 ...``.
        methods: One row per method: ``level, seconds`` (scoring time), ``n_items``.
        graph: The graph the scores are on.
    """

    edge_scores: dict[str, pd.DataFrame]
    node_scores: dict[str, pd.DataFrame]
    prompt_metrics: pd.DataFrame
    methods: pd.DataFrame
    graph: Graph = field(repr=False)


def evaluate_task(
    loaded, records: Sequence[TaskRecord], task: str, settings, batch_size: int | None = 16
) -> TaskEvaluation:
    """Score the task's edges (and nodes) with every method of :data:`METHODS`, build
    each method's circuits at :data:`PERCENTAGES` and measure every circuit on every
    prompt (see the module docstring)."""
    records = list(records)[: settings.n_prompts]
    runs, metric = task_runs(loaded.tokenizer, records, task)
    graph = Graph.from_model(loaded)
    edge_scores: dict[str, pd.DataFrame] = {}
    node_scores: dict[str, pd.DataFrame] = {}
    seconds: dict[str, float] = {}

    def timed(method, compute):
        start = time.perf_counter()
        result = compute()
        seconds[method] = time.perf_counter() - start
        print(f"{task}: {method} scored in {seconds[method]:.1f} s", flush=True)
        return result

    edge_scores["eap"] = timed(
        "eap",
        lambda: edge_attribution(loaded, runs, metric, "eap", graph=graph, batch_size=batch_size),
    )
    edge_scores["eap-ig"] = timed(
        "eap-ig",
        lambda: edge_attribution(
            loaded, runs, metric, "eap-ig", steps=settings.ig_steps, graph=graph,
            batch_size=batch_size,
        ),
    )  # fmt: skip
    node_scores["atp"] = timed(
        "atp", lambda: node_attribution(loaded, runs, metric, graph, batch_size)
    )
    edge_scores["exact"] = timed(
        "exact",
        lambda: exact_over_candidates(
            loaded, runs, metric, graph, edge_scores["eap-ig"], settings.exact_edges
        ),
    )
    edge_scores["random"] = timed("random", lambda: random_edge_scores(graph, settings.seed))
    # Seconds of the exact method include the EAP-IG pass that picked its candidates,
    # unless every edge was patched.
    if not (settings.exact_edges <= 0 or settings.exact_edges >= len(edge_scores["eap-ig"])):
        seconds["exact"] += seconds["eap-ig"]

    n_edges = int(graph.edge_mask.sum())
    n_nodes = len(graph.upstream)
    rows, masks = [], []
    for method in METHODS:
        if method in NODE_METHODS:
            counts = [int(p * n_nodes) for p in PERCENTAGES]
            masks.append(node_circuit_masks(graph, node_scores[method], counts))
        else:
            counts = [int(p * n_edges) for p in PERCENTAGES]
            masks.append(top_edge_masks(graph, edge_scores[method], counts))
        rows += [(method, p, c) for p, c in zip(PERCENTAGES, counts, strict=True)]
    full = graph.edge_mask[None]
    masks.append(torch.cat([torch.zeros_like(full), full]))
    rows += [("empty", 0.0, 0), ("full", 1.0, n_edges)]
    start = time.perf_counter()
    values = circuit_prompt_metrics(
        loaded, runs, metric, graph, torch.cat(masks), settings.ablation
    ).numpy()
    print(f"{task}: {len(rows)} circuits evaluated in {time.perf_counter() - start:.1f} s")
    prompt_metrics = pd.DataFrame(rows, columns=["method", "percentage", "count"])
    prompt_metrics = pd.concat(
        [prompt_metrics, pd.DataFrame(values, columns=[f"p{i}" for i in range(runs.n_prompts)])],
        axis=1,
    )
    methods = pd.DataFrame(
        {
            "method": list(METHODS),
            "level": ["node" if m in NODE_METHODS else "edge" for m in METHODS],
            "seconds": [seconds[m] for m in METHODS],
            "n_items": [n_nodes if m in NODE_METHODS else n_edges for m in METHODS],
        }
    )
    methods["task"] = task
    methods["n_prompts"] = runs.n_prompts
    return TaskEvaluation(edge_scores, node_scores, prompt_metrics, methods, graph)


# --------------------------------------------------- curves and areas (torch-free use)


def _prompt_values(prompt_metrics: pd.DataFrame) -> np.ndarray:
    return prompt_metrics.filter(regex=r"^p\d+$").to_numpy(dtype=np.float64)


def _method_statistic(prompt_metrics: pd.DataFrame, method: str):
    """``rows -> [f per size..., CPR, CMD]`` of one method, from the per-prompt table."""
    values = _prompt_values(prompt_metrics)
    methods = prompt_metrics["method"].to_numpy()
    sized = values[methods == method]
    empty, full = values[methods == "empty"][0], values[methods == "full"][0]
    percentages = prompt_metrics.loc[methods == method, "percentage"].to_numpy()

    def statistic(rows: np.ndarray) -> np.ndarray:
        return faithfulness_and_areas(sized[:, rows], empty[rows], full[rows], percentages)

    return statistic


def method_areas(
    prompt_metrics: pd.DataFrame, samples: int, confidence: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(curves, areas)`` of every method with bootstrap CIs over prompts.

    ``curves``: ``method, percentage, count, faithfulness, ci_low, ci_high``;
    ``areas``: ``method, cpr, cpr_low, cpr_high, cmd, cmd_low, cmd_high``.
    """
    n_prompts = _prompt_values(prompt_metrics).shape[1]
    curves, areas = [], []
    for method in [m for m in prompt_metrics["method"].unique() if m not in ("empty", "full")]:
        statistic = _method_statistic(prompt_metrics, method)
        point = statistic(np.arange(n_prompts))
        draws = bootstrap(statistic, [n_prompts], samples, seed)
        intervals = [percentile_interval(draws[:, i], confidence) for i in range(len(point))]
        sizes = prompt_metrics[prompt_metrics["method"] == method]
        for i, (p, c) in enumerate(zip(sizes["percentage"], sizes["count"], strict=True)):
            curves.append((method, p, c, point[i], *intervals[i]))
        areas.append((method, point[-2], *intervals[-2], point[-1], *intervals[-1]))
    return (
        pd.DataFrame(
            curves,
            columns=["method", "percentage", "count", "faithfulness", "ci_low", "ci_high"],
        ),
        pd.DataFrame(
            areas, columns=["method", "cpr", "cpr_low", "cpr_high", "cmd", "cmd_low", "cmd_high"]
        ),
    )


def area_difference(
    prompt_metrics: pd.DataFrame,
    method: str,
    other: str,
    area: str,
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float, int]:
    """``area(method) - area(other)`` (``area``: ``cpr`` or ``cmd``) with a paired
    bootstrap CI (both curves on the same resampled prompts); and the prompt count."""
    index = -2 if area == "cpr" else -1
    first = _method_statistic(prompt_metrics, method)
    second = _method_statistic(prompt_metrics, other)

    def statistic(rows: np.ndarray) -> np.ndarray:
        return np.array([first(rows)[index] - second(rows)[index]])

    n_prompts = _prompt_values(prompt_metrics).shape[1]
    point = float(statistic(np.arange(n_prompts))[0])
    draws = bootstrap(statistic, [n_prompts], samples, seed)
    low, high = percentile_interval(draws[:, 0], confidence)
    return point, low, high, n_prompts
