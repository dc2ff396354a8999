"""The reproduced papers, one registered unit each (see :mod:`circuit_repro.papers.spec`).

Adding a paper: its library package ``circuit_repro.papers.<name>`` (exposing
``PAPER``, a :class:`~circuit_repro.papers.spec.Paper`, from a torch-free
``__init__``), ``workflow/rules/papers/<name>.smk``, ``workflow/scripts/<name>/``,
``notebooks/<name>.ipynb``, its claims file, and one line in :data:`PAPER_MODULES`.
The Snakefile's includes, ``rule all``, the merged claims table, the config schema,
the check that a paper's tasks are enabled and the presets all loop over
:data:`PAPERS`.
"""

from __future__ import annotations

import importlib

from circuit_repro.papers.spec import Paper

#: One line per paper, in the order the report lists them.
PAPER_MODULES: tuple[str, ...] = (
    "circuit_repro.papers.mcqa",  # P1, Lieberum et al. 2023
    "circuit_repro.papers.reuse",  # P2, Merullo, Eickhoff & Pavlick 2023
    "circuit_repro.papers.transcoders",  # P3, Dunefsky, Chlenski & Nanda 2024
    "circuit_repro.papers.subspace",  # P5, Makelov, Lange & Nanda 2023
    "circuit_repro.papers.icl",  # P6, Cho, Kato, Sakai & Inoue 2024
    "circuit_repro.papers.sparks",  # P4, Park, Jeong & Kang 2025
    "circuit_repro.papers.recall",  # P7, Fartale et al. 2025
    "circuit_repro.papers.circuits",  # MIB circuit localisation, Mueller et al. 2025
)


def _load(modules: tuple[str, ...]) -> dict[str, Paper]:
    papers = {}
    for module in modules:
        paper = importlib.import_module(module).PAPER
        if paper.name in papers:
            raise ValueError(f"two papers are named {paper.name!r} ({module})")
        papers[paper.name] = paper
    return papers


PAPERS: dict[str, Paper] = _load(PAPER_MODULES)
