"""Seeded, tokenizer-aware task generators, one module per task.

:func:`generate_task` is the single entry point the pipeline calls: it maps a task
name from ``config.tasks`` (one of :data:`TASK_NAMES`) to its generator and that task's
parameters, and returns typed :class:`~circuit_repro.tasks.records.TaskRecord` objects.
Every generator returns dicts with the same core fields (``prompt``, ``answer``,
``wrong_answer``, ``candidates``, ``correct``, ``roles`` (token positions) and
``counterfactuals``; see :mod:`circuit_repro.tasks.records`) plus its own extras.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from circuit_repro.tasks.records import TaskRecord

# Task name -> (module, function, extra keyword arguments fixed by the task name).
_GENERATORS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ioi": ("ioi", "generate_ioi", {}),
    "colored_objects": ("colored_objects", "generate_colored_objects", {}),
    "greater_than": ("greater_than", "generate_greater_than", {}),
    "mcqa": ("mcqa", "generate_mcqa", {}),
    "mc_categories": ("mc_categories", "generate_mc_categories", {"split": "test"}),
    "facts": ("facts", "generate_facts", {}),
    "icl_sentiment": ("icl", "generate_icl", {"task": "sentiment"}),
    "icl_topic": ("icl", "generate_icl", {"task": "topic"}),
    "recall_reasoning": ("recall_reasoning", "generate_recall_reasoning", {}),
}

#: Names of the tasks :func:`generate_task` knows (the keys of ``config.tasks``).
TASK_NAMES: tuple[str, ...] = tuple(_GENERATORS)


# Config fields that are not generator arguments.
_NOT_ARGUMENTS = {"enabled"}


def generator(task: str) -> Callable[..., list[dict[str, Any]]]:
    """The generator function of ``task`` with its fixed arguments bound (returns dicts)."""
    try:
        module_name, function_name, fixed = _GENERATORS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASK_NAMES)}") from None
    function = getattr(importlib.import_module(f"{__name__}.{module_name}"), function_name)

    def generate(tokenizer, **kwargs):
        return function(tokenizer, **fixed, **kwargs)

    return generate


def generate_task(
    task: str, tokenizer: Any, params: Mapping[str, Any], seed: int
) -> list[TaskRecord]:
    """Generate the records of ``task`` for ``tokenizer`` with its config ``params``.

    Args:
        task: One of :data:`TASK_NAMES`.
        tokenizer: A fast Hugging Face tokenizer of the model under study.
        params: The task's config section; ``enabled`` is ignored, every other key is a
            generator argument (``n_prompts``, ``k_shot``, ...).
        seed: Seed of the generator.

    Returns:
        The records, ids ``0..n-1``; ``write_jsonl`` stores them as the generator's dicts.

    Raises:
        ValueError: ``task`` is unknown, or the parameters are invalid.
        TaskTooSmallError: Too few records fit the tokenizer.
    """
    arguments = {k: v for k, v in params.items() if k not in _NOT_ARGUMENTS}
    records = generator(task)(tokenizer, seed=seed, **arguments)
    return [TaskRecord.from_dict(record) for record in records]
