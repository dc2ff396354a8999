"""Where a job's wall time goes: startup, model loading, writing, and the rest.

A rule's job is one Python process. Its time outside the analysis itself (starting the
interpreter, importing torch and transformers, loading the weights, booting the
TransformerBridge, writing results) is overhead that every job pays again; the rest is
model computation. :func:`phase` accumulates named phases in this process (the model
loaders time themselves as ``model_load``); the rule context
(:mod:`circuit_repro.pipeline.rule_context`) adds ``startup`` (process start to the
script body) and ``write`` (sidecars and renames) and writes one ``timing: {...}`` line
to the rule's log, which ``python -m circuit_repro.bench.jobs`` sums over a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator

TIMING_PREFIX = "timing: "

_phase_seconds: dict[str, float] = defaultdict(float)
_depth = 0


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall time of the block to phase ``name`` (nested phases count once, in
    the outermost: loading a bridge includes loading its model)."""
    global _depth
    started = time.perf_counter()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _phase_seconds[name] += time.perf_counter() - started


def phase_seconds() -> dict[str, float]:
    """Seconds spent so far in each named phase of this process."""
    return dict(_phase_seconds)


def process_age() -> float:
    """Seconds since this process started (its creation time as the OS records it)."""
    try:
        import psutil

        return time.time() - psutil.Process(os.getpid()).create_time()
    except Exception:  # no psutil, or no permission: count from the first call
        return time.perf_counter() - _FIRST_CALL


_FIRST_CALL = time.perf_counter()


def timing_line(startup: float, write: float, total: float) -> str:
    """The ``timing: {...}`` log line of a job: its phases and ``compute``, the rest."""
    phases = {"startup": startup, **phase_seconds(), "write": write}
    phases["compute"] = max(0.0, total - sum(phases.values()))
    phases["total"] = total
    return TIMING_PREFIX + json.dumps({k: round(v, 3) for k, v in phases.items()})


def parse_timing_line(line: str) -> dict[str, float] | None:
    """The phases of a ``timing:`` log line (None for any other line)."""
    if not line.startswith(TIMING_PREFIX):
        return None
    return json.loads(line[len(TIMING_PREFIX) :])
