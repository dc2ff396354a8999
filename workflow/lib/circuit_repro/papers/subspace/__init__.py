"""P5. The subspace activation-patching illusion (Makelov, Lange & Nanda 2023, arXiv 2311.17030).

Patching a learned 1-D subspace of an MLP's hidden activations can make the model
answer as if a feature had changed although the MLP does not carry the feature: the
direction's part in the kernel of the MLP's output weights, causally disconnected on
its own, activates a dormant pathway through its part in the row space.

- :mod:`.ioi`: the IOI position feature (ABB vs BAB prompts): the layer scan that picks
  the MLP, DAS directions in that MLP and in the residual stream, their row-space and
  kernel parts, norm-matched random controls, Table 1.
- :mod:`.facts`: factual recall: per-fact 1-D directions at the last subject token and
  the rank-1 weight edits they define, tested on held-out prompts about the subject.
- :mod:`.claims`: measurements of the claims in ``claims.yaml``.

This ``__init__`` is torch-free (the workflow imports it to build the DAG).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuit_repro.papers.spec import (
    Paper,
    bootstrap_samples_setting,
    confidence_setting,
    seed_setting,
    setting,
)

#: The paper's two tasks: IOI for the position feature, facts for the rank-1 edits.
IOI_TASK, FACTS_TASK = "ioi", "facts"

#: Interventions per site, in Table 1's order (``nullspace`` for MLP sites only).
INTERVENTIONS = ("full", "direction", "rowspace", "nullspace", "placebo")


@dataclass
class SubspaceSettings:
    """The ``subspace`` config section (defaults are the default run's values)."""

    train_pairs: int = setting(
        200,
        "IOI base/source pairs DAS trains on (the paper's 200: a quarter each of "
        "ABB->ABB, ABB->BAB, BAB->ABB, BAB->BAB), from the training names and templates.",
        minimum=8,
    )
    test_pairs: int = setting(
        200,
        "Held-out IOI pairs (ABB->BAB and BAB->ABB, names and templates disjoint from "
        "training) on which Table 1 is measured.",
        minimum=8,
    )
    rank: int = setting(1, "Dimension of the learned subspaces (the paper's 1).", minimum=1)
    epochs: int = setting(30, "DAS epochs (the paper's 30).", minimum=1)
    batch_size: int = setting(20, "DAS batch size (the paper's 20).", minimum=1)
    lr: float = setting(
        0.01,
        "DAS Adam learning rate, decaying linearly to a tenth over the epochs (the authors' code).",
        exclusiveMinimum=0,
    )
    loss_vocabulary: str = setting(
        "names",
        "Tokens DAS's cross-entropy is over: names = every single-token IOI name (about "
        "20 times cheaper with Gemma 3's 262k-token vocabulary); vocabulary = all tokens, "
        "as the paper. Test metrics always read the whole vocabulary.",
        enum=["names", "vocabulary"],
    )
    layer: int = setting(
        -1,
        "The MLP layer (analogue of GPT-2 small's MLP8) whose hidden activations and "
        "residual stream DAS trains in; -1 picks the layer whose residual stream at the "
        "final token carries the position feature most (full-patch FLDD).",
        minimum=-1,
    )
    control_layer: int = setting(
        -1,
        "The control MLP (a layer with no causal role); -1 picks the nearest layer before "
        "the chosen one whose residual-stream patch has under a tenth of its FLDD.",
        minimum=-1,
    )
    reader_heads: int = setting(
        3,
        "Heads after the chosen layer whose queries read the position feature (the "
        "paper's three name movers); the residual direction's row-space part is taken "
        "in the span their queries read.",
        minimum=1,
    )
    facts_layers: list[float] = setting(
        [0.25],
        "MLP layers for the fact-editing experiment, as fractions of depth (0 = first "
        "layer, 1 = last).",
        items={"type": "number", "minimum": 0, "maximum": 1},
        minItems=1,
    )
    facts_pairs: int = setting(
        32,
        "Pairs of known facts (subject -> attribute and another subject of the same "
        "relation) given a direction and an edit each (the paper: 40). Each distinct prompt "
        "shape costs a pass per optimisation step.",
        minimum=2,
    )
    facts_steps: int = setting(40, "Optimisation steps of the fact directions (Adam).", minimum=1)
    facts_lr: float = setting(0.1, "Adam learning rate of the fact directions.", exclusiveMinimum=0)
    bootstrap_samples: int = bootstrap_samples_setting("pairs")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


PAPER = Paper(
    name="subspace",
    title="Is This the Subspace You Are Looking for? An Interpretability Illusion for "
    "Subspace Activation Patching",
    citation="Makelov, Lange & Nanda 2023, arXiv 2311.17030 (ICLR 2024)",
    settings=SubspaceSettings,
    tasks=lambda section: [IOI_TASK, FACTS_TASK],
    figures=("table1", "decomposition", "fact_editing"),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={
        "quick": {
            "train_pairs": 16,
            "test_pairs": 12,
            "epochs": 2,
            "facts_pairs": 4,
            "facts_steps": 4,
            "bootstrap_samples": 200,
        }
    },
)
