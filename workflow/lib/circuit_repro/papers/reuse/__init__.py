"""P2. Circuit component reuse across tasks (Merullo, Eickhoff & Pavlick 2023, arXiv 2310.08744).

The paper finds that GPT-2 medium solves Indirect Object Identification (IOI) and
Colored Objects with largely the same attention heads, and that making a few heads
attend on Colored Objects the way they do on IOI repairs the model's errors.

- :mod:`.roles`: where each task puts the tokens head classes attend to.
- :mod:`.circuit`: path patching by stage, circuit selection, head classes.
- :mod:`.overlap`: circuit overlap between tasks with bootstrap CIs.
- :mod:`.intervention`: the attention intervention on Colored Objects.
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

#: Tasks whose circuits are compared; the first is the reference circuit.
REFERENCE_TASK = "ioi"
TARGET_TASK = "colored_objects"
CONTROL_TASKS = ("greater_than", "facts")
#: ``reuse.positions`` values: the authors' final position, or every position.
POSITION_MODES = ("final", "all")


@dataclass
class ReuseSettings:
    """The ``reuse`` config section (defaults are the default run's values)."""

    controls: list[str] = setting(
        list(CONTROL_TASKS),
        "Tasks whose circuits are compared with IOI's as controls.",
        items={"enum": list(CONTROL_TASKS)},
        uniqueItems=True,
    )
    n_prompts: int = setting(
        16,
        "Prompts per task for path patching and head classes (the intervention uses "
        "every prompt of the task). Cost grows linearly with it.",
        minimum=4,
    )
    top_fraction: float = setting(
        0.02,
        "Fraction of all heads kept per path-patching stage (the paper keeps 2%).",
        exclusiveMinimum=0,
        maximum=1,
    )
    stages: int = setting(
        3,
        "Path-patching stages (the paper's three: heads into the final residual stream, "
        "heads into those heads' queries, heads into those heads' keys and values; a "
        "fourth goes into the third stage's keys and values). Overlaps are reported at "
        "depth 2 and at this depth.",
        minimum=1,
        maximum=4,
    )
    positions: str = setting(
        "final",
        "Where senders are patched and receivers put back: final = each prompt's final "
        "position, as the authors' code does; all = every position (Wang et al. 2022).",
        enum=list(POSITION_MODES),
    )
    compare_positions: bool = setting(
        True,
        "Also run path patching for IOI and Colored Objects in the other position mode "
        "and report their overlap beside the main one (all positions cost about twice "
        "the final position's time).",
    )
    attention_threshold: float = setting(
        0.3, "Mean attention a head needs at a task role to be given a class.", minimum=0, maximum=1
    )
    intervention_heads: int = setting(
        20,
        "Heads with the largest Colored Objects path-patching effects at each of stages 1 "
        "and 2, intervened on one at a time (the intervention vs path-patching "
        "correlation, per stage).",
        minimum=3,
    )
    random_draws: int = setting(
        20,
        "Seeded random head sets per intervention group and sampler (same layers, "
        "anywhere), forced to attend like the group: the intervention's control.",
        minimum=20,
    )
    negative_mover_target: str = setting(
        "answer",
        "Where a negative mover is made to attend: answer = the correct colour (on IOI "
        "negative movers attend to the name they suppress, the indirect object); "
        "wrong_answers = the other colours, like the inhibition heads.",
        enum=["answer", "wrong_answers"],
    )
    bootstrap_samples: int = bootstrap_samples_setting("prompts")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


def _tasks(section) -> list[str]:
    return [REFERENCE_TASK, TARGET_TASK, *section.get("controls", CONTROL_TASKS)]


PAPER = Paper(
    name="reuse",
    title="Circuit Component Reuse Across Tasks in Transformer Language Models",
    citation="Merullo, Eickhoff & Pavlick 2023, arXiv 2310.08744",
    settings=ReuseSettings,
    tasks=_tasks,
    figures=("head_effects", "overlap", "intervention"),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={"quick": {"n_prompts": 8, "intervention_heads": 5, "bootstrap_samples": 200}},
)
