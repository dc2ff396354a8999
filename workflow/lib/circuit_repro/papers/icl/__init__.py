"""P6. The in-context learning inference circuit (Cho, Kato, Sakai & Inoue 2024, arXiv 2410.04468).

ICL classification runs in three steps: (1) *summarise*: each text is encoded into its
forerunner token (the ``:`` before the label); (2) *semantics merge*: each label token
reads its forerunner, so it carries the demonstration's text as well as the label;
(3) *retrieve and copy*: the query's forerunner attends to the label tokens of
demonstrations similar to it and copies them, and the unembedding reads the copy.

- :mod:`.curve`: k-shot accuracy for k = 0 .. ``k_max``.
- :mod:`.states`: one clean pass over the task's prompts recording hidden states at the
  forerunners and labels and the attention rows of the forerunners and labels; the
  probes (step 1), kernel alignment (step 2) and head counts (step 3) read it.
- :mod:`.knockouts`: the attention-edge knockouts of each step per range of layers,
  each against as many random edges from the same query tokens.
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

#: The ICL task data sets this paper analyses (each has its own label set).
ICL_TASKS = ("icl_sentiment", "icl_topic")

#: Knocked-out edge sets, in the paper's order (Table 1 lines 2-5, Table 2), named by
#: the direction information flows: ``xi_si`` = demonstration text -> its forerunner
#: (the forerunner may no longer read its text).
STEPS = ("xi_si", "xq_sq", "si_yi", "yi_sq", "si_si")

#: The circuit step each knockout disables (si_si is the paper's bypass check).
STEP_OF = {"xi_si": 1, "xq_sq": 1, "si_yi": 2, "yi_sq": 3, "si_si": 3}

#: Head kinds counted (see :mod:`.states`).
HEAD_KINDS = ("forerunner_token", "induction", "correct_induction", "forerunner_retrieval")


@dataclass
class IclSettings:
    """The ``icl`` config section (defaults are the default run's values)."""

    tasks: list[str] = setting(
        list(ICL_TASKS),
        "ICL task data sets to analyse (their k_shot is the k every analysis uses).",
        items={"enum": list(ICL_TASKS)},
        minItems=1,
        uniqueItems=True,
    )
    k_max: int = setting(8, "The k-shot accuracy curve runs k = 0 .. k_max.", minimum=1, maximum=16)
    curve_prompts: int = setting(
        24,
        "Prompts per k on the accuracy curve (drawn afresh per k, seeded).",
        minimum=4,
    )
    knockout_prompts: int = setting(
        40,
        "Task prompts the knockouts run on (the first ones of the task's data set); "
        "every knockout and its control cost one pass over them per layer range.",
        minimum=4,
    )
    layer_ranges: int = setting(
        4,
        "Knockouts run in this many equal ranges of depth (4 = quarters, as the paper).",
        minimum=1,
    )
    head_threshold: float = setting(
        5.0,
        "A head counts when its attention to the targets reaches this multiple of "
        "uniform attention (the paper's 5).",
        exclusiveMinimum=0,
    )
    probe_folds: int = setting(
        5, "Cross-validation folds of the probes (prompts never straddle folds).", minimum=2
    )
    probe_ridge: float = setting(
        1.0,
        "Ridge penalty of the linear probe, relative to the mean eigenvalue of the "
        "training features' Gram matrix.",
        exclusiveMinimum=0,
    )
    neighbours: int = setting(
        64,
        "Nearest neighbours compared by the kernel alignment of step 2 (the paper's 64; "
        "capped at an eighth of the demonstrations).",
        minimum=1,
    )
    batch_size: int = setting(16, "Prompts per forward pass.", minimum=1)
    bootstrap_samples: int = bootstrap_samples_setting("prompts")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


PAPER = Paper(
    name="icl",
    title="Revisiting In-context Learning Inference Circuit in Large Language Models",
    citation="Cho, Kato, Sakai & Inoue 2024, arXiv 2410.04468 (ICLR 2025)",
    settings=IclSettings,
    tasks=lambda section: list(section.get("tasks", ICL_TASKS)),
    figures=("curves", "probes", "heads", "knockouts"),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={
        "quick": {
            "tasks": ["icl_sentiment"],
            "k_max": 2,
            "curve_prompts": 4,
            "knockout_prompts": 6,
            "layer_ranges": 2,
            "probe_folds": 2,
            "neighbours": 4,
            "bootstrap_samples": 200,
        }
    },
)
