"""MIB's circuit evaluation on the real default model: EAP-IG's top IOI edges carry the
behaviour far better than random edge sets of the same sizes, and the exact method's
patched edges outrank the ones it left in EAP-IG's order."""

from __future__ import annotations

import numpy as np
import pytest

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.circuits import CircuitsSettings
from circuit_repro.papers.circuits.evaluation import area_difference, evaluate_task, method_areas
from circuit_repro.tasks import generate_task


@pytest.fixture(scope="module")
def evaluation(smollm2_dir):
    loaded = load_bridge(smollm2_dir)
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": 8}, seed=0)
    settings = CircuitsSettings(n_prompts=8, exact_edges=20, bootstrap_samples=200)
    return evaluate_task(loaded, records, "ioi", settings)


def test_eap_ig_circuits_beat_random_edges_of_the_same_sizes(evaluation):
    curves, areas = method_areas(evaluation.prompt_metrics, 200, 0.95, 0)
    by = areas.set_index("method")
    assert by.loc["eap-ig", "cpr"] > 0.7, by
    assert by.loc["random", "cpr"] < 0.6, by
    value, low, _, _ = area_difference(
        evaluation.prompt_metrics, "eap-ig", "random", "cpr", 200, 0.95, 0
    )
    assert low > 0.2, value
    full = curves[curves["percentage"] == 1.0]
    np.testing.assert_allclose(full["faithfulness"], 1.0, atol=1e-4)


def test_exact_patching_ranks_its_candidates_by_their_effect(evaluation):
    exact = evaluation.edge_scores["exact"]
    patched = exact[exact["patched"]]
    assert len(patched) == 20
    assert patched["score"].abs().max() > 0.1  # one edge alone moves the logit difference
    rest = exact.loc[~exact["patched"], "score"].abs()
    assert patched.loc[patched["score"] != 0, "score"].abs().min() > rest.max()
