"""Seeded, tokenizer-aware task generators, one module per task.

:func:`generate_task` is the single entry point the pipeline calls: it maps a task
name from ``config.tasks`` to its generator and that task's parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def _ioi(tokenizer, params: Mapping[str, Any], seed: int) -> list[dict]:
    from circuit_repro.tasks.ioi import generate_ioi

    return generate_ioi(tokenizer, n_prompts=params["n_prompts"], seed=seed)


GENERATORS: dict[str, Callable[[Any, Mapping[str, Any], int], list[dict]]] = {
    "ioi": _ioi,
}


def generate_task(task: str, tokenizer, params: Mapping[str, Any], seed: int) -> list[dict]:
    """Generate the records of ``task`` for ``tokenizer`` (see each task's module)."""
    try:
        generator = GENERATORS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(GENERATORS)}") from None
    return generator(tokenizer, params, seed)
