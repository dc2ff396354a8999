"""P7. Recall vs reasoning circuits and their double dissociation (Fartale et al. 2025,
arXiv 2510.03366).

Fact recall ("Bob lives in the capital city of Spain, the city of" -> Madrid) and
reasoning over given facts ("... the home city of Alice, the city of" -> Alice's city
from the context) share one surface form (the ``recall_reasoning`` task). Each family's
circuit is located by activation and attribution patching at layer, head and neuron
level; ablating each circuit, and size-matched random sets, gives the 2x2 table
(ablate recall / reasoning x measure recall / reasoning) and the double-dissociation
test.

- :mod:`.analysis`: locating both circuits, the ablations, the 2x2 tables.
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

TASK = "recall_reasoning"

#: The two families, and the levels at which circuits are located and ablated.
FAMILIES = ("recall", "reasoning")
LEVELS = ("layer", "head", "neuron")


@dataclass
class RecallSettings:
    """The ``recall`` config section (defaults are the default run's values)."""

    locate_prompts: int = setting(
        5,
        "Prompts per family for the layer x position patching maps (exact patching "
        "of the residual stream and the MLP outputs at every position); attribution "
        "patching reads every prompt and is checked on twice as many.",
        minimum=2,
    )
    ablation_pairs: int = setting(
        25,
        "Prompt pairs (one recall and one reasoning prompt each) the ablations run on; "
        "every ablated set costs one pass over them.",
        minimum=2,
    )
    circuit_layers: int = setting(2, "MLP layers in each family's layer-level circuit.", minimum=1)
    circuit_heads: float = setting(
        0.05,
        "Share of all heads in each family's head-level circuit (at least 2).",
        exclusiveMinimum=0,
        maximum=0.5,
    )
    circuit_neurons: int = setting(
        32,
        "Neurons in each family's neuron-level circuit, from the MLP layers of its "
        "layer-level circuit.",
        minimum=1,
    )
    selection: str = setting(
        "specific",
        "How circuit components are ranked: specific = effect on the family minus effect "
        "on the other family (what one ability needs and the other does not); own = "
        "effect on the family alone.",
        enum=["specific", "own"],
    )
    validation_heads: int = setting(
        24,
        "Heads on which attribution patching is checked against exact patching (Spearman).",
        minimum=3,
    )
    random_draws: int = setting(
        20, "Size-matched random sets per circuit (seeded, matched per layer).", minimum=2
    )
    ablation: str = setting(
        "mean",
        "How a component is ablated: mean over the task's prompts (both families) at "
        "each position, zero, or resample (another prompt's activation).",
        enum=["mean", "zero", "resample"],
    )
    bootstrap_samples: int = bootstrap_samples_setting("prompts")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


PAPER = Paper(
    name="recall",
    title="Disentangling Recall and Reasoning in Transformer Models through Layer-wise "
    "Attention and Activation Analysis",
    citation="Fartale, Kattamuri, Raja, Vats, Prasad & Moharir 2025, arXiv 2510.03366",
    settings=RecallSettings,
    tasks=lambda section: [TASK],
    figures=("patching", "dissociation", "controls"),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={
        "quick": {
            "locate_prompts": 4,
            "ablation_pairs": 4,
            "circuit_layers": 1,
            "circuit_neurons": 4,
            "validation_heads": 4,
            "random_draws": 3,
            "bootstrap_samples": 200,
        }
    },
)
