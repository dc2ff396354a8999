"""The training recipes of ``source: trained`` checkpoint series (config/models.yaml).

- ``induction``: a small transformer trained from scratch on repeated random token
  sequences. The second copy of a sequence is predictable only by an induction
  mechanism (attend to the token after the previous occurrence of the current token
  and copy it; Olsson et al. 2022), so induction heads must form, and the loss on the
  repeat drops when they do: a training-dynamics analysis with a known answer.
- ``mc_categories``: supervised fine-tuning of a pretrained model on multiple-choice
  category questions in the MCQA letter format (:mod:`circuit_repro.tasks.mc_categories`),
  the loss on the answer letter only, on words disjoint from those analysed:
  a CPU-sized stand-in for the post-training of Park, Jeong and Kang (2025).

:func:`train_series` runs a recipe with the series' checkpoints as the plan's
checkpoint steps (:mod:`circuit_repro.engine.training`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_repro.engine.training import (
    TrainingPlan,
    TrainingRun,
    answer_batches,
    repeated_token_batches,
    train,
)
from circuit_repro.models.load import load_model
from circuit_repro.tasks.mc_categories import generate_mc_categories
from circuit_repro.tasks.records import TaskRecord

#: Token ids of the induction recipe's random sequences start here (past the offline
#: tokenizer's special tokens).
FIRST_RANDOM_TOKEN = 10


def series_plan(entry: Mapping[str, Any]) -> TrainingPlan:
    """The training plan of a ``trained`` registry entry: its recipe's optimiser
    settings, its series' checkpoints as the steps to save."""
    training = entry["training"]
    return TrainingPlan(
        steps=training["steps"],
        checkpoints=tuple(sorted(int(c) for c in entry["series"]["checkpoints"])),
        lr=training.get("lr", 1e-3),
        warmup=training.get("warmup", 0),
        trainable=tuple(training.get("trainable", ())),
        seed=training.get("seed", 0),
    )


def recipe_model_and_batches(entry: Mapping[str, Any], base_dir: str | Path | None):
    """``(model, tokenizer, batch_at)`` of a recipe: the model to train (the base model,
    or a fresh one built from ``architecture``) and its batches by step."""
    training = entry["training"]
    seed = training.get("seed", 0)
    batch_size = training.get("batch_size", 8)
    if base_dir is not None:
        model, tokenizer = load_model(base_dir)
    else:
        from circuit_repro.models.tiny import (
            RandomModelSpec,
            build_offline_tokenizer,
            build_random_model,
        )

        tokenizer = build_offline_tokenizer()
        spec = RandomModelSpec(architecture=entry["family"], seed=seed, **entry["architecture"])
        model = build_random_model(spec, tokenizer)
    recipe = training["recipe"]
    if recipe == "induction":
        vocab_size = training.get("vocab_size", 256)
        if FIRST_RANDOM_TOKEN + vocab_size > len(tokenizer):
            raise ValueError(
                f"induction recipe: vocab_size {vocab_size} exceeds the tokenizer's "
                f"{len(tokenizer) - FIRST_RANDOM_TOKEN} usable tokens"
            )
        vocab = range(FIRST_RANDOM_TOKEN, FIRST_RANDOM_TOKEN + vocab_size)
        batches = repeated_token_batches(
            vocab, training.get("sequence_length", 16), batch_size, seed, tokenizer.bos_token_id
        )
    elif recipe == "mc_categories":
        records = generate_mc_categories(
            tokenizer, training.get("n_questions", 1000), seed=seed, split="train"
        )
        batches = answer_batches(
            tokenizer, [TaskRecord.from_dict(r) for r in records], batch_size, seed
        )
    else:  # the registry schema allows no other
        raise ValueError(f"unknown training recipe {recipe!r}")
    return model, tokenizer, batches


def train_series(
    entry: Mapping[str, Any],
    base_dir: str | Path | None,
    out_dir: str | Path,
    progress: bool = True,
) -> TrainingRun:
    """Train a ``trained`` series (resuming from its last complete checkpoint in
    ``out_dir``) and save every checkpoint of its series there."""
    model, tokenizer, batches = recipe_model_and_batches(entry, base_dir)
    return train(model, batches, series_plan(entry), out_dir, tokenizer, progress=progress)
