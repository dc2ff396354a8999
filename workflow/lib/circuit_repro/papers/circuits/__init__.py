"""Circuit discovery measured as MIB measures it (Mueller et al. 2025, "MIB: A
Mechanistic Interpretability Benchmark", arXiv 2504.13151; circuit-localisation track).

MIB scores a circuit-discovery method by the faithfulness curve of its scores: keep the
top edges (or nodes) at sizes from 0.1% to 100% of the graph, ablate everything else
with the counterfactual's values, and integrate ``f = (m(C) - m(empty)) / (m(N) -
m(empty))`` over the sizes (CPR, higher is better) and ``|1 - f|`` (CMD, lower is
better). Here every method runs on the same prompts and graph: exact edge patching,
node-level attribution patching (AtP), EAP and EAP-IG, beside a random ranking of the
edges (the size-matched control), on IOI with each model and on MCQA with the model the
mcqa paper analyses (its post-trained checkpoint where one is configured). A planted
circuit in tiny models is the ground truth for edge recovery (AUROC), as MIB's
InterpBench model is.

- :mod:`.evaluation`: the methods' scores, their circuits' per-prompt metrics, curves.
- :mod:`.planted`: recovery of a planted circuit (AUROC per method).
- :mod:`.claims`: measurements of the claims in ``claims.yaml``.

This ``__init__`` is torch-free (the workflow imports it to build the DAG).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit_repro.papers.spec import (
    Paper,
    bootstrap_samples_setting,
    confidence_setting,
    seed_setting,
    setting,
)

PAPER_NAME = "circuits"
#: Tasks MIB's circuit track shares with our task set, and each one's counterfactual.
COUNTERFACTUALS = {"ioi": "abc", "mcqa": "shuffled"}
#: Methods compared, in the order tables list them; ``random`` is the control.
METHODS = ("exact", "atp", "eap", "eap-ig", "random")
#: MIB's circuit sizes (shares of the edges, or of the nodes for node-level methods).
PERCENTAGES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


@dataclass
class CircuitsSettings:
    """The ``circuits`` config section (defaults are the values of an enabled run)."""

    tasks: list[str] = setting(
        list(COUNTERFACTUALS),
        "Tasks evaluated: ioi with each model; mcqa with the model the mcqa paper "
        "analyses in its place (mcqa.post_trained).",
        items={"enum": list(COUNTERFACTUALS)},
        uniqueItems=True,
        minItems=1,
    )
    n_prompts: int = setting(
        32,
        "Prompts per task for every method's scores and every circuit's faithfulness "
        "(the CIs bootstrap over them). Cost grows linearly with it.",
        minimum=4,
    )
    ig_steps: int = setting(5, "Integration steps of EAP-IG (MIB uses 5).", minimum=1)
    exact_edges: int = setting(
        300,
        "Edges patched one at a time for the exact method: the top ones by |EAP-IG| "
        "score, re-ranked by their exact effect, the rest kept in EAP-IG's order below "
        "them; 0 patches every edge (MIB's exact method; about 0.4 s per edge for "
        "SmolLM2-135M at 32 prompts on 2 CPU cores, so meant for a GPU).",
        minimum=0,
    )
    ablation: str = setting(
        "source",
        "Value an ablated edge carries: source = the counterfactual prompt's (MIB's "
        "patching ablation), mean = the mean over the counterfactual prompts.",
        enum=["source", "mean"],
    )
    export_percentage: float = setting(
        0.05,
        "Share of the edges marked in_graph in the exported MIB circuit files.",
        exclusiveMinimum=0,
        maximum=1,
    )
    planted_models: list[str] = setting(
        ["tiny-llama", "tiny-gpt2", "tiny-neox"],
        "Tiny models in which a circuit is planted (config/models.yaml ids); each "
        "method's edge scores are scored by AUROC against it.",
        minItems=1,
        uniqueItems=True,
    )
    bootstrap_samples: int = bootstrap_samples_setting("prompts")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


def _section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config.get(PAPER_NAME, {})


def configured_tasks(config: Mapping[str, Any]) -> list[str]:
    return list(_section(config).get("tasks", CircuitsSettings().tasks))


def task_model(config: Mapping[str, Any], model: str, task: str) -> str:
    """The model a task is evaluated on for the unit ``model``: itself for IOI; for
    MCQA, the model the mcqa paper analyses in its place (its post-trained checkpoint)."""
    if task != "mcqa":
        return model
    from circuit_repro.papers.mcqa import analysed_models

    units = analysed_models({**config, "models": [model]})
    return units[0]


PAPER = Paper(
    name=PAPER_NAME,
    title="MIB: A Mechanistic Interpretability Benchmark (circuit localisation)",
    citation="Mueller, Geiger, Wiegreffe et al. 2025, arXiv 2504.13151",
    settings=CircuitsSettings,
    tasks=lambda section: list(section.get("tasks", CircuitsSettings().tasks)),
    figures=("curves", "areas", "planted"),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={
        "quick": {
            "enabled": True,
            "n_prompts": 6,
            "exact_edges": 20,
            "planted_models": ["tiny-llama"],
            "bootstrap_samples": 200,
        }
    },
    enabled_by_default=False,
)
