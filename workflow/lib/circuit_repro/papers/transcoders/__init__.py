"""P3. Transcoders vs SAEs, and a transcoder feature circuit for greater-than (Dunefsky,
Chlenski & Nanda 2024, "Transcoders Find Interpretable LLM Feature Circuits", arXiv
2406.11944).

A transcoder reads an MLP's input (after the pre-MLP norm) and predicts the MLP's
output through a wide, sparse ReLU layer (:mod:`circuit_repro.engine.dictionary`); an
SAE reconstructs the MLP's output from itself. Per model:

- the greater-than MLP: the layer whose output, mean-ablated at the final position,
  lowers the greater-than probability difference most (:mod:`.analysis`);
- a text corpus that exists offline (:mod:`circuit_repro.tasks.corpus`), activations
  collected there (:mod:`circuit_repro.engine.collect`), transcoders and SAEs trained
  at several L1 coefficients, and one transcoder at the layer before;
- sparsity (L0) against faithfulness (next-token loss with the dictionary spliced in
  place of the MLP) for both kinds;
- greater-than with only the top-k transcoder features vs the top-k MLP neurons, each
  beside random sets of k; the connections between the two layers' transcoder
  features, input-invariant (weights only) times input-dependent (activations);
- the top-activating contexts of a sample of features.

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

PAPER_NAME = "transcoders"
TASK = "greater_than"
#: The two kinds of dictionary compared.
KINDS = ("transcoder", "sae")


@dataclass
class TranscodersSettings:
    """The ``transcoders`` config section (defaults are the default run's values)."""

    layer: int = setting(
        -1,
        "MLP layer of the sweep and the greater-than analysis; -1: the layer whose MLP "
        "output, mean-ablated at the final position, lowers the greater-than "
        "probability difference most.",
        minimum=-1,
    )
    corpus: str = setting(
        "package",
        "Training text: package (Python's own documentation and standard-library "
        "docstrings, offline) or hf:<dataset>[:<config>]:<split>:<column> (a Hugging "
        "Face dataset, needs the hub and the datasets package).",
    )
    context_length: int = setting(64, "Tokens per training context.", minimum=8)
    train_tokens: int = setting(
        60_000, "Activation vectors collected for training (per layer).", minimum=1024
    )
    eval_tokens: int = setting(
        2048, "Held-out tokens of the sparsity / faithfulness evaluation.", minimum=256
    )
    expansion: int = setting(4, "Dictionary width as a multiple of d_model.", minimum=1)
    l1: list[float] = setting(
        [2e-5, 5e-5, 1.5e-4],
        "L1 coefficients of the sweep (each trains one transcoder and one SAE).",
        minItems=1,
    )
    lr: float = setting(
        2e-3,
        "Adam learning rate (the paper's 4e-4 over 15k steps; a few hundred steps need more).",
        exclusiveMinimum=0,
    )
    batch_size: int = setting(1024, "Activation vectors per training step.", minimum=16)
    epochs: int = setting(4, "Passes over the collected activations.", minimum=1)
    previous_layer: bool = setting(
        True,
        "Also train a transcoder at the layer before (middle L1) for the feature-to-"
        "feature connections.",
    )
    prompts: int = setting(
        100,
        "Greater-than prompts: half rank the features and neurons, half measure.",
        minimum=8,
    )
    top_k: list[int] = setting(
        [1, 2, 5, 10, 20, 50], "Numbers of features / neurons kept.", minItems=1
    )
    claim_k: int = setting(20, "The k the top-k claim is judged at (the paper's ~20).", minimum=1)
    random_draws: int = setting(5, "Random sets of k per k (size-matched controls).", minimum=1)
    connection_features: int = setting(
        10, "Top greater-than features whose upstream connections are measured.", minimum=1
    )
    inspected_features: int = setting(
        16, "Features whose top-activating contexts the report shows.", minimum=1
    )
    top_contexts: int = setting(5, "Contexts shown per inspected feature.", minimum=1)
    bootstrap_samples: int = bootstrap_samples_setting("prompts")
    confidence: float = confidence_setting()
    seed: int = seed_setting()


#: Result tables of one model (``results/transcoders/<model>/<name>.csv``).
TABLES = ("sweep", "top_k", "top_k_prompts", "connections", "features")
#: Figure captions of the report, by figure.
FIGURE_LABELS = {
    "frontier": "sparsity against faithfulness, transcoders and SAEs",
    "top_k": "greater-than with the top-k features or neurons",
    "connections": "input-invariant and input-dependent feature connections",
}


PAPER = Paper(
    name=PAPER_NAME,
    title="Transcoders Find Interpretable LLM Feature Circuits",
    citation="Dunefsky, Chlenski & Nanda 2024, arXiv 2406.11944",
    settings=TranscodersSettings,
    tasks=lambda section: [TASK],
    figures=tuple(FIGURE_LABELS),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={
        "quick": {
            "context_length": 16,
            "train_tokens": 4096,
            "eval_tokens": 512,
            "l1": [1e-4, 1e-3],
            "batch_size": 256,
            "epochs": 1,
            "prompts": 16,
            "top_k": [1, 2, 5],
            "claim_k": 2,
            "random_draws": 2,
            "connection_features": 3,
            "inspected_features": 4,
            "top_contexts": 2,
            "bootstrap_samples": 200,
        }
    },
)
