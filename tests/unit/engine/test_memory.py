"""Sweeps that run out of memory halve their batch and carry on with equal numbers."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

import circuit_repro.engine.patching as patching_module
from circuit_repro.engine.hooks import all_components
from circuit_repro.engine.memory import (
    SweepOutOfMemoryError,
    is_out_of_memory,
    run_halving_on_oom,
)
from circuit_repro.engine.patching import patching_sweep, runs_from_records
from circuit_repro.tasks import generate_task


def fits_at_most(limit, done):
    """A batch runner that runs out of memory (like torch's allocators) above ``limit``."""

    def run(items):
        if len(items) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(items)} GiB")
        done.extend(items)

    return run


def test_a_batch_that_does_not_fit_is_halved_until_it_does(caplog):
    done = []
    with caplog.at_level(logging.WARNING):
        run_halving_on_oom(fits_at_most(3, done), list(range(10)), what="patches")
    assert done == list(range(10))  # each item once, in order
    halvings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert halvings[0] == (
        "out of memory on a batch of 10 patches; halving it to 5 and 5 and continuing"
    )
    assert len(halvings) == 3  # 10 -> 5 + 5, then each 5 -> 2 + 3


def test_one_item_that_does_not_fit_is_one_line_naming_the_fix():
    with pytest.raises(SweepOutOfMemoryError) as raised:
        run_halving_on_oom(fits_at_most(0, []), [1, 2], what="patches")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("out of memory on one of the patches alone")
    assert "lower the task's n_prompts" in message


def test_other_errors_are_not_taken_for_out_of_memory():
    def broken(items):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_halving_on_oom(broken, [1, 2, 3])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"
            ),
            True,
        ),
        (MemoryError(), True),
        (RuntimeError("expected scalar type Float"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised_on_cpu_and_gpu(error, expected):
    assert is_out_of_memory(error) is expected


def test_a_patching_sweep_that_runs_out_of_memory_gives_the_same_table(
    tiny_model_id, tiny_model, monkeypatch
):
    loaded = tiny_model(tiny_model_id)
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": 6}, seed=0)
    runs, metric = runs_from_records(loaded.tokenizer, records)
    components = all_components(loaded.bridge, "head") + all_components(loaded.bridge, "mlp_out")
    reference = patching_sweep(loaded, runs, components, metric, progress=False)
    assert max(n for _, _, n in reference.attrs["passes"]) > 2  # there is a batch to halve

    forward = patching_module.logits_at
    rows_run = []

    def small_memory(loaded, tokens, *args, **kwargs):
        if tokens.shape[0] > 2 * runs.n_prompts:  # more than two patches per pass
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")
        rows_run.append(tokens.shape[0])
        return forward(loaded, tokens, *args, **kwargs)

    monkeypatch.setattr(patching_module, "logits_at", small_memory)
    halved = patching_sweep(loaded, runs, components, metric, progress=False)
    assert max(n for _, _, n in halved.attrs["passes"]) <= 2
    assert sum(n for _, _, n in halved.attrs["passes"]) == sum(
        n for _, _, n in reference.attrs["passes"]
    )
    pd.testing.assert_frame_equal(halved, reference, check_exact=False, rtol=0, atol=1e-5)
