"""Sweeps that survive running out of memory: a batch that does not fit is halved.

A sweep (activation patching, attribution) groups its work into batches sized by a
token budget; on a smaller machine, or next to another job, a batch may not fit.
:func:`run_halving_on_oom` runs a batch and, when it runs out of memory, frees what it
can and runs the two halves instead, recursively, telling the user once per halving.
The results do not change: the work items of a batch are independent of each other
(each patch has its own copy of the prompts), so any split gives the same numbers.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from circuit_repro.errors import UserFacingError

log = logging.getLogger(__name__)
Item = TypeVar("Item")

#: Substrings of the RuntimeError messages of allocators that ran out (CPU and CUDA).
_OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "not enough memory",
    "can't allocate memory",
    "cannot allocate memory",
)


class SweepOutOfMemoryError(UserFacingError, MemoryError):
    """Even one work item of a sweep does not fit in memory."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator running out of memory (CPU or accelerator)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(m in text for m in _OUT_OF_MEMORY_MESSAGES)


def release_memory() -> None:
    """Collect garbage and return the accelerator's cached blocks to it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_halving_on_oom(
    run: Callable[[Sequence[Item]], None], items: Sequence[Item], what: str = "items"
) -> None:
    """``run(items)``; if that runs out of memory, ``run`` on each half instead.

    Halving repeats until a part fits; a single item that does not fit raises
    :class:`SweepOutOfMemoryError` (one line: what did not fit and what to lower).
    ``run`` must leave no partial effect behind when it raises (write its results only
    once it has computed them).

    Args:
        run: Computes and records the results of a batch of items.
        items: The batch.
        what: What the items are, for the messages ("patches", "prompts").
    """
    try:
        run(items)
        return
    except Exception as error:  # noqa: BLE001 (only out-of-memory errors are handled)
        if not is_out_of_memory(error):
            raise
        if len(items) <= 1:
            raise SweepOutOfMemoryError(
                f"out of memory on one of the {what} alone ({error}); lower the task's n_prompts "
                "or run on a machine with more memory"
            ) from None
    # Out of the except block, so the failed attempt's frames (and tensors) are freed.
    release_memory()
    half = len(items) // 2
    log.warning(
        "out of memory on a batch of %d %s; halving it to %d and %d and continuing",
        len(items),
        what,
        half,
        len(items) - half,
    )
    run_halving_on_oom(run, items[:half], what)
    run_halving_on_oom(run, items[half:], what)
