"""Recovery of a planted circuit: the ground truth MIB's InterpBench track provides.

MIB (Mueller et al. 2025) scores edge recovery on InterpBench models (Gupta et al. 2024),
trained so that a known circuit carries the task, by the AUROC of a method's edge scores
against the circuit's edges. We plant one by hand instead
(:func:`~circuit_repro.engine.faithfulness.plant_circuit`): every head and MLP outside a
chosen set writes nothing, so exactly the edges between live writers and live readers
can move the metric. The prompts are random tokens, the source differing from the base
at every position, so that every planted edge carries a change (with IOI prompts an edge
from the embedding into the last position's query carries none: planted is then not the
same as effective).
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from circuit_repro.engine.edges import Graph, edge_attribution, exact_edge_patching
from circuit_repro.engine.faithfulness import edge_auroc, plant_circuit
from circuit_repro.engine.metrics import LogitDiffMetric, Metric
from circuit_repro.engine.patching import PatchingRuns
from circuit_repro.papers.circuits.evaluation import random_edge_scores

#: The planted circuit: heads (layer, head) and MLP layers kept live.
PLANTED_HEADS = ((0, 1), (1, 0), (1, 3))
PLANTED_MLPS = (0,)
#: Edge-level methods scored against the planted circuit.
PLANTED_METHODS = ("exact", "eap", "eap-ig", "random")


def random_token_runs(
    vocab_size: int, n_prompts: int = 8, length: int = 10, seed: int = 0
) -> tuple[PatchingRuns, Metric]:
    """Base prompts of random tokens from the lower half of the vocabulary, sources
    shifted into the upper half (different at every position), and the logit
    difference of two fixed tokens at the last position."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randint(0, vocab_size // 2, (n_prompts, length), generator=generator)
    source = base + vocab_size // 2
    read = torch.full((n_prompts,), length - 1)
    metric = LogitDiffMetric(torch.full((n_prompts,), 3), torch.full((n_prompts,), 7))
    return PatchingRuns(base, source, read, direction="source -> base"), metric


def planted_recovery(loaded, model: str, ig_steps: int = 5, seed: int = 0) -> pd.DataFrame:
    """Plant :data:`PLANTED_HEADS` and :data:`PLANTED_MLPS` in ``loaded`` (in place) and
    score every method's edge scores against the planted edges.

    Returns:
        One row per method: ``model, method, auroc, n_edges, n_planted, seconds``.
    """
    graph = Graph.from_model(loaded)
    planted = plant_circuit(loaded, PLANTED_HEADS, PLANTED_MLPS, graph)
    runs, metric = random_token_runs(loaded.bridge.cfg.d_vocab, seed=seed)
    compute = {
        "exact": lambda: exact_edge_patching(loaded, runs, metric, graph=graph),
        "eap": lambda: edge_attribution(loaded, runs, metric, "eap", graph=graph),
        "eap-ig": lambda: edge_attribution(
            loaded, runs, metric, "eap-ig", steps=ig_steps, graph=graph
        ),
        "random": lambda: random_edge_scores(graph, seed),
    }
    rows = []
    for method in PLANTED_METHODS:
        start = time.perf_counter()
        scores = compute[method]()
        seconds = time.perf_counter() - start
        rows.append({"model": model, "method": method, "auroc": edge_auroc(scores, planted),
                     "n_edges": len(scores), "n_planted": len(planted), "seconds": seconds})  # fmt: skip
    return pd.DataFrame(rows)
