"""Seeded, tokenizer-aware task generators, one module per task.

:func:`generate_task` is the single entry point the pipeline calls: it maps a task
name from ``config.tasks`` to its generator and that task's parameters. Every
generator returns records with the same core fields (see :mod:`circuit_repro.tasks.base`):
``prompt``, ``answer``, ``wrong_answer``, ``candidates``, ``correct``, ``roles``
(token positions) and ``counterfactuals``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

# Task name -> (module, function, extra keyword arguments fixed by the task name).
_GENERATORS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ioi": ("ioi", "generate_ioi", {}),
    "colored_objects": ("colored_objects", "generate_colored_objects", {}),
    "greater_than": ("greater_than", "generate_greater_than", {}),
    "mcqa": ("mcqa", "generate_mcqa", {}),
    "facts": ("facts", "generate_facts", {}),
    "icl_sentiment": ("icl", "generate_icl", {"task": "sentiment"}),
    "icl_topic": ("icl", "generate_icl", {"task": "topic"}),
    "recall_reasoning": ("recall_reasoning", "generate_recall_reasoning", {}),
}
GENERATORS = tuple(_GENERATORS)

# Config fields that are not generator arguments.
_NOT_ARGUMENTS = {"enabled"}


def generator(task: str) -> Callable[..., list[dict]]:
    """The generator function of ``task`` with its fixed arguments bound."""
    try:
        module_name, function_name, fixed = _GENERATORS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(GENERATORS)}") from None
    function = getattr(importlib.import_module(f"{__name__}.{module_name}"), function_name)

    def generate(tokenizer, **kwargs):
        return function(tokenizer, **fixed, **kwargs)

    return generate


def generate_task(task: str, tokenizer, params: Mapping[str, Any], seed: int) -> list[dict]:
    """Generate the records of ``task`` for ``tokenizer`` with its config ``params``."""
    arguments = {k: v for k, v in params.items() if k not in _NOT_ARGUMENTS}
    return generator(task)(tokenizer, seed=seed, **arguments)
