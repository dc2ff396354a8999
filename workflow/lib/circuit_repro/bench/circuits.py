"""Circuit discovery on IOI with SmolLM2-135M: each method's time beside the quality of
its circuits (MIB's CPR and CMD; :mod:`circuit_repro.papers.circuits`).

For each method the table gives its scoring time on the prompts, that time in forward
passes of the same prompts (``fwd_equiv``) beside the passes the method cannot do
without (``passes``: EAP and AtP a source forward plus a base forward and backward,
EAP-IG a base and a source forward plus a forward and backward per integration step),
and its circuits' CPR and CMD with 95% bootstrap intervals over prompts. The exact
method patches the top EAP-IG edges one at a time; a second table compares it with the
plain loop (one full forward pass per edge with the edge's patch hooked in) on a sample
of those edges, values and time (ours includes recording every node's output on both
runs once, a fixed cost the edges share).
``python -m circuit_repro.bench.circuits``; part of ``make bench``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from circuit_repro.bench import report_rows
from circuit_repro.engine.edges import (
    Graph,
    edge_intervention_hooks,
    exact_edge_patching,
    graph_hooks_enabled,
    record_outputs,
)
from circuit_repro.engine.patching import prompt_metric
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.papers.circuits import CircuitsSettings
from circuit_repro.papers.circuits.evaluation import evaluate_task, method_areas, task_runs
from circuit_repro.paths import REPO_ROOT
from circuit_repro.tasks import generate_task

ROW_KEYS = ("model", "method", "level", "seconds", "fwd_equiv", "passes", "cpr", "cpr_ci",
            "cmd", "cmd_ci")  # fmt: skip
EXACT_KEYS = ("model", "edges", "ours_s", "naive_s", "vs_naive", "max_diff")


def passes(method: str, ig_steps: int, exact_edges: int) -> str:
    """The forward and backward passes ``method`` needs, in words."""
    return {
        "eap": "2 fwd + 1 bwd",
        "atp": "2 fwd + 1 bwd",
        "eap-ig": f"{2 + ig_steps} fwd + {ig_steps} bwd",
        "random": "none",
        "exact": f"EAP-IG's + {exact_edges} partial fwd",
    }[method]


@torch.no_grad()
def naive_exact(loaded, runs, metric, graph: Graph, edges) -> list[float]:
    """Each edge patched by a full forward pass of every prompt (no batching of edges,
    no start at the receiver's layer): the plain loop."""
    up = {node.name: i for i, node in enumerate(graph.upstream)}
    down = {node.name: i for i, node in enumerate(graph.downstream)}
    with graph_hooks_enabled(loaded.bridge):
        args = (runs.read_positions, runs.attention_mask)
        source = record_outputs(loaded, graph, runs.source_tokens, *args)
        base = prompt_metric(loaded, runs.base_tokens, runs, metric).double()
        values = []
        for u, v in edges:
            coefficients = torch.zeros(1, *graph.edge_mask.shape)
            coefficients[0, up[u], down[v]] = 1.0
            hooks = edge_intervention_hooks(graph, coefficients, source, runs.n_prompts)
            with loaded.bridge.hooks(fwd_hooks=hooks):
                patched = prompt_metric(loaded, runs.base_tokens, runs, metric).double()
            values.append(float((patched - base).mean()))
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Circuit discovery: time and CPR/CMD.")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--exact-edges", type=int, default=100)
    parser.add_argument("--naive-edges", type=int, default=32)
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    loaded = load_bridge(ensure_prepared(args.model))
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": args.prompts}, seed=0)
    settings = CircuitsSettings(
        n_prompts=args.prompts, exact_edges=args.exact_edges, bootstrap_samples=1000
    )
    runs, metric = task_runs(loaded.tokenizer, records, "ioi")
    with torch.no_grad():
        prompt_metric(loaded, runs.base_tokens, runs, metric)  # warm up
        start = time.perf_counter()
        prompt_metric(loaded, runs.base_tokens, runs, metric)
        forward = time.perf_counter() - start
    result = evaluate_task(loaded, records, "ioi", settings)
    _, areas = method_areas(result.prompt_metrics, settings.bootstrap_samples, 0.95, 0)
    areas = areas.set_index("method")
    rows = []
    for method in result.methods.itertuples():
        a = areas.loc[method.method]
        rows.append({
            "model": args.model, "method": method.method, "level": method.level,
            "seconds": float(method.seconds), "fwd_equiv": float(method.seconds / forward),
            "passes": passes(method.method, settings.ig_steps, args.exact_edges),
            "cpr": float(a["cpr"]), "cpr_ci": f"[{a['cpr_low']:.3f}, {a['cpr_high']:.3f}]",
            "cmd": float(a["cmd"]), "cmd_ci": f"[{a['cmd_low']:.3f}, {a['cmd_high']:.3f}]",
        })  # fmt: skip
    print(f"IOI, {args.prompts} prompts; one forward pass of them: {forward:.3f} s; "
          f"exact: the top {args.exact_edges} EAP-IG edges, its time includes EAP-IG's\n")  # fmt: skip
    report_rows(rows, ROW_KEYS, Path(args.output_dir) / "circuits.json")

    exact = result.edge_scores["exact"]
    sample = exact[exact["patched"]].head(args.naive_edges)
    edges = list(zip(sample["upstream"], sample["downstream"], strict=True))
    graph = result.graph
    start = time.perf_counter()
    ours = exact_edge_patching(loaded, runs, metric, graph=graph, edges=edges)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_exact(loaded, runs, metric, graph, edges)
    naive_seconds = time.perf_counter() - start
    diff = max(abs(a - b) for a, b in zip(ours["score"], naive, strict=True))
    print(f"\nExact edge patching, {len(edges)} edges: ours against the plain loop\n")
    report_rows(
        [
            {
                "model": args.model,
                "edges": len(edges),
                "ours_s": ours_seconds,
                "naive_s": naive_seconds,
                "vs_naive": naive_seconds / ours_seconds,
                "max_diff": diff,
            }
        ],  # fmt: skip
        EXACT_KEYS,
        Path(args.output_dir) / "circuits_exact.json",
    )


if __name__ == "__main__":
    main()
