"""The circuit-discovery bench: its table on a tiny model, and exact edge patching
against the plain loop of full forward passes."""

from __future__ import annotations

import json

import pytest

from circuit_repro.bench.circuits import ROW_KEYS, main, naive_exact
from circuit_repro.engine.edges import Graph, exact_edge_patching
from circuit_repro.papers.circuits.evaluation import task_runs
from circuit_repro.tasks import generate_task


def test_exact_patching_equals_the_plain_loop(tiny_model_id, tiny_model):
    loaded = tiny_model(tiny_model_id)
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": 4}, seed=0)
    runs, metric = task_runs(loaded.tokenizer, records, "ioi")
    graph = Graph.from_model(loaded)
    edges = graph.edges()[::7]
    ours = exact_edge_patching(loaded, runs, metric, graph=graph, edges=edges)
    assert ours["score"].tolist() == pytest.approx(
        naive_exact(loaded, runs, metric, graph, edges), rel=1e-4, abs=1e-6
    )


def test_the_bench_writes_one_row_per_method(tmp_path):
    main(["--model", "tiny-gpt2", "--prompts", "4", "--exact-edges", "6", "--naive-edges", "3",
          "--output-dir", str(tmp_path)])  # fmt: skip
    rows = json.loads((tmp_path / "circuits.json").read_text())
    assert [row["method"] for row in rows] == ["exact", "atp", "eap", "eap-ig", "random"]
    assert all(set(row) == set(ROW_KEYS) for row in rows)
    (exact,) = json.loads((tmp_path / "circuits_exact.json").read_text())
    assert exact["edges"] == 3 and exact["max_diff"] < 1e-4
