"""What ``rule all`` builds, from the config and the paper registry (torch-free).

The Snakefile asks :func:`all_targets` for its inputs; nothing here names a paper, so
a registered paper's figures and claims join the DAG, the merged claims table and the
report without an edit to shared files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from circuit_repro.papers import PAPERS
from circuit_repro.pipeline.config import enabled_papers

MERGED_CLAIMS = ("results/claims.csv", "results/claims.html")
#: The reproduction report (:mod:`circuit_repro.pipeline.report`).
REPORT = "results/report.html"


def baseline_targets(models: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """Every model's baseline table, the task-baseline figures and summary."""
    ioi_figures = [f"results/figures/ioi_baseline/ioi_baseline.{ext}" for ext in ("png", "pdf")]
    return [
        *(f"results/tasks/{model}/baseline.csv" for model in models),
        *(ioi_figures if "ioi" in tasks else []),
        "results/figures/task_baselines/task_baselines.png",
        "results/figures/task_baselines/task_baselines.pdf",
        "results/tasks/baseline_summary.html",
    ]


def paper_targets(config: Mapping[str, Any]) -> list[str]:
    """Claims and figures of every enabled paper and each of its result units (the
    configured models, or the paper's own units such as checkpoint series)."""
    return [
        target
        for name in enabled_papers(config)
        for model in PAPERS[name].result_units(config)
        for target in PAPERS[name].targets(model)
    ]


def paper_claims(config: Mapping[str, Any]) -> list[str]:
    """``claims.csv`` of every enabled paper and model: the merged table's inputs."""
    return [
        PAPERS[name].claims_path(model)
        for name in enabled_papers(config)
        for model in PAPERS[name].result_units(config)
    ]


def all_targets(config: Mapping[str, Any], tasks: Sequence[str]) -> list[str]:
    """Everything the default target builds."""
    merged = list(MERGED_CLAIMS) if paper_claims(config) else []
    return [
        *baseline_targets(config["models"], tasks),
        *paper_targets(config),
        *merged,
        REPORT,
    ]
