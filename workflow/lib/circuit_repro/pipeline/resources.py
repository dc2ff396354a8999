"""Cluster resources of a rule, from the kind of work it does and the model's size.

Rules call :func:`rule_resources` from ``resources:`` lambdas (see
``workflow/rules/common.smk``); executors that schedule jobs (SLURM) turn the result
into ``sbatch --mem/-t/--cpus-per-task/--gpus``. Locally, Snakemake only uses the
numbers to keep ``--resources`` limits.

The estimates are deliberately simple and generous: host memory is a floor plus a
multiple of the model's fp32 size (checkpoints are stored as fp32 safetensors), run
time a floor plus minutes per billion parameters. A job that still runs out of memory
or time is retried (the slurm profile sets ``retries``) with ``attempt`` times the
memory and time. GPUs go only to the kinds that run the model many times (analysis
sweeps, training), and only when the config asks for CUDA.

This module is imported while Snakemake parses the workflow: keep it free of heavy
imports (torch, transformers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

KINDS = ("fetch", "prepare", "tasks", "analysis", "training", "notebook", "summary")
"""Kinds of rule:

- ``fetch``: download raw weights (a local rule; runs on the submitting host).
- ``prepare``: convert weights to fp32 safetensors (whole model in memory, several copies).
- ``tasks``: build task prompts (tokenizer only).
- ``analysis``: run the model over prompts: behaviour, patching and attribution sweeps.
- ``training``: train or fine-tune a model (weights, gradients, optimizer state).
- ``notebook``: render figures from results (no model).
- ``summary``: combine small result files into a table (no model).
"""

GPU_KINDS = frozenset({"analysis", "training"})
"""Kinds that get GPUs when ``compute.device`` is CUDA."""

BYTES_PER_PARAMETER = 4
"""Prepared checkpoints are fp32."""

GPU_MEMORY_MB = 40_000
"""Usable memory of one GPU assumed when sizing multi-GPU jobs (an A100 40GB)."""

UNKNOWN_N_PARAMETERS = 2_000_000_000
"""Size assumed for a model whose size cannot be read from its registry entry."""

# Models whose names carry no size.
KNOWN_SIZES = {
    "gpt2": 124_000_000,
    "gpt2-medium": 355_000_000,
    "gpt2-large": 774_000_000,
    "gpt2-xl": 1_560_000_000,
}

# (floor MB, times the fp32 model size) of host memory; (floor minutes, minutes per
# billion parameters) of run time; (cpus for models under 1B, cpus from 1B on).
_MEMORY = {
    "fetch": (1_024, 1.0),
    "prepare": (2_048, 3.0),
    "tasks": (1_024, 0.0),
    "analysis": (2_048, 2.0),
    "training": (4_096, 4.0),
    "notebook": (2_048, 0.0),
    "summary": (1_024, 0.0),
}
_RUNTIME = {
    "fetch": (30, 30),
    "prepare": (15, 15),
    "tasks": (10, 0),
    "analysis": (30, 60),
    "training": (120, 240),
    "notebook": (15, 0),
    "summary": (10, 0),
}
_CPUS = {
    "fetch": (1, 1),
    "prepare": (1, 2),
    "tasks": (1, 1),
    "analysis": (1, 4),
    "training": (2, 8),
    "notebook": (1, 1),
    "summary": (1, 1),
}
# GPU jobs need host memory too, but the model lives on the device: fp32 weights,
# plus gradients and two Adam moments when training.
_GPU_MEMORY_FACTOR = {"analysis": 2.0, "training": 5.0}

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([mb])(?![a-z])", re.IGNORECASE)


def n_parameters(model: float | Mapping[str, Any] | None, model_id: str | None = None) -> int:
    """Number of parameters of a model, or an estimate of it.

    Args:
        model: A number of parameters, a registry entry (``config/models.yaml``), or
            None (rules that run no model: 0).
        model_id: The entry's registry id, a further place to read a size from.

    A registry entry's size comes from, in order: ``n_parameters`` if present; the
    dimensions of a ``random`` model; a size written in its repository, description,
    package names or id (``...-135M``, ``Qwen2.5-0.5B``, ``Gemma 3 270M``); a table of
    known models (GPT-2); else :data:`UNKNOWN_N_PARAMETERS`.
    """
    if model is None:
        return 0
    if isinstance(model, bool):
        raise TypeError("model must be a number of parameters or a registry entry")
    if isinstance(model, (int, float)):
        if model < 0:
            raise ValueError(f"n_parameters must be >= 0, got {model}")
        return int(model)
    if not isinstance(model, Mapping):
        raise TypeError(f"model must be a number of parameters or a registry entry, got {model!r}")
    if "n_parameters" in model:
        return int(model["n_parameters"])
    if model.get("source") in ("random", "trained") and "architecture" in model:
        return _random_model_size(model.get("architecture") or {})
    names = [
        model.get("repo", ""),
        model.get("description", ""),
        *model.get("packages", []),
        model_id or "",
        model.get("base", ""),  # a fine-tuned series is the size of its base model
    ]
    for name in names:
        match = _SIZE_IN_NAME.search(str(name))
        if match:
            scale = 1e6 if match.group(2).lower() == "m" else 1e9
            return int(float(match.group(1)) * scale)
    for name in (model.get("repo", "").split("/")[-1], model_id or ""):
        if name.lower() in KNOWN_SIZES:
            return KNOWN_SIZES[name.lower()]
    return UNKNOWN_N_PARAMETERS


def _random_model_size(architecture: Mapping[str, Any]) -> int:
    """Parameters of a tiny random model (embeddings, attention, MLP), roughly."""
    layers = architecture.get("n_layers", 2)
    d_model = architecture.get("d_model", 64)
    d_mlp = architecture.get("d_mlp", 128)
    vocab = 4096  # random_models.MAX_VOCAB_SIZE, not imported: it pulls in transformers
    return 2 * vocab * d_model + layers * (4 * d_model * d_model + 3 * d_model * d_mlp)


def uses_gpu(device: str | None) -> bool:
    """Whether ``compute.device`` asks for CUDA (``auto`` does not request GPUs)."""
    return bool(device) and str(device).startswith("cuda")


def rule_resources(
    kind: str,
    model: float | Mapping[str, Any] | None = None,
    attempt: int = 1,
    *,
    device: str | None = "cpu",
    model_id: str | None = None,
) -> dict[str, int]:
    """Resources of one job: ``mem_mb``, ``runtime`` (minutes), ``cpus_per_task``, ``gpu``.

    Args:
        kind: One of :data:`KINDS`.
        model: The job's model: a number of parameters or a registry entry; None for
            rules that run no model.
        attempt: Snakemake's attempt number (1 on the first try). Memory and run time
            are multiplied by it, so a retry after running out of either asks for more.
        device: ``compute.device`` of the config. ``analysis`` and ``training`` jobs get
            GPUs only when it is ``cuda``; enough of them to hold the model (at least 1).
        model_id: The registry id (helps :func:`n_parameters` find a size).

    Raises:
        ValueError: For an unknown kind or an attempt below 1.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown rule kind {kind!r}; expected one of {', '.join(KINDS)}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    size = n_parameters(model, model_id)
    model_mb = size * BYTES_PER_PARAMETER / 1e6
    billions = size / 1e9

    floor_mb, per_model = _MEMORY[kind]
    mem_mb = floor_mb + per_model * model_mb
    floor_min, per_billion = _RUNTIME[kind]
    runtime = floor_min + per_billion * billions
    small_cpus, large_cpus = _CPUS[kind]
    cpus = small_cpus if billions < 1 else large_cpus

    gpu = 0
    if kind in GPU_KINDS and uses_gpu(device):
        gpu = max(1, math.ceil(_GPU_MEMORY_FACTOR[kind] * model_mb / GPU_MEMORY_MB))
    return {
        "mem_mb": _round_up(mem_mb * attempt, 256),
        "runtime": _round_up(runtime * attempt, 5),
        "cpus_per_task": cpus,
        "gpu": gpu,
    }


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def resource_functions(
    kind: str,
    registry: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | None = "cpu",
) -> dict[str, Callable[..., int]]:
    """Callables for a rule's ``resources:`` directive, one per resource.

    Each takes ``(wildcards, attempt)`` as Snakemake passes them and evaluates
    :func:`rule_resources` for the job's ``{model}`` (looked up in ``registry``; rules
    without a ``{model}`` wildcard count as running no model). One more resource,
    ``attempt``, is the attempt number itself: Snakemake gives scripts no other way to
    know it (``snakemake.resources.attempt``, used by :func:`circuit_repro.pipeline.rule_context.rule_context`);
    schedulers ignore it::

        rule baseline:
            resources:
                **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    """
    if kind not in KINDS:
        raise ValueError(f"unknown rule kind {kind!r}; expected one of {', '.join(KINDS)}")

    def one(name: str) -> Callable[..., int]:
        def resource(wildcards, attempt):
            # A training job is keyed by its series, whose entry sizes it.
            model_id = getattr(wildcards, "model", None) or getattr(wildcards, "series", None)
            entry = registry[model_id] if (registry is not None and model_id) else None
            return rule_resources(kind, entry, attempt, device=device, model_id=model_id)[name]

        resource.__name__ = f"{kind}_{name}"
        return resource

    def attempt(wildcards, attempt):
        return attempt

    return {
        **{name: one(name) for name in ("mem_mb", "runtime", "cpus_per_task", "gpu")},
        "attempt": attempt,
    }
