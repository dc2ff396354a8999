"""The sweep of dictionaries of one model: which to train, on what text, and training
them with resumption (a dictionary already saved with the same settings is kept).

- :func:`sweep_specs`: transcoders and SAEs at the greater-than MLP for every L1
  coefficient, and a transcoder at the layer before (for the feature connections).
- :func:`corpus_contexts`: the training and evaluation contexts, disjoint windows of
  one seeded draw from the configured text.
- :func:`train_sweep`: collect the MLP inputs and outputs once (shards on disk), then
  train every dictionary not yet saved.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from circuit_repro.engine.collect import ShuffledBatches, collect_to_shards
from circuit_repro.engine.dictionary import (
    SparseDictionary,
    load_dictionary,
    save_dictionary,
    train_dictionary,
    unit_scale,
)
from circuit_repro.tasks.corpus import (
    hf_dataset_text,
    package_text,
    package_text_info,
    token_contexts,
)

log = logging.getLogger(__name__)

#: The first position of every context is an outlier (BOS or a cut-off word): skipped.
SKIP_POSITIONS = 1
#: Rows per activation shard on disk (about 150 MB per layer for d_model 576).
SHARD_TOKENS = 32_768
EVAL_CONTEXTS = "eval_contexts.safetensors"


@dataclass(frozen=True)
class DictionarySpec:
    """One dictionary of the sweep."""

    kind: str  # "transcoder" or "sae"
    layer: int
    l1: float

    @property
    def name(self) -> str:
        return f"{self.kind}_L{self.layer}_l1_{self.l1:g}"


def sweep_specs(layer: int, settings) -> list[DictionarySpec]:
    """Both kinds at ``layer`` for every L1 coefficient, then (``previous_layer``) a
    transcoder at ``layer - 1`` with the middle coefficient."""
    specs = [DictionarySpec(kind, layer, l1) for kind in ("transcoder", "sae")
             for l1 in settings.l1]  # fmt: skip
    if settings.previous_layer and layer >= 1:
        middle = sorted(settings.l1)[len(settings.l1) // 2]
        specs.append(DictionarySpec("transcoder", layer - 1, middle))
    return specs


def middle_transcoder(specs: list[DictionarySpec], layer: int) -> DictionarySpec:
    """The transcoder at ``layer`` with the middle L1 coefficient (the one the
    greater-than analysis and the inspection use)."""
    at_layer = sorted((s for s in specs if s.kind == "transcoder" and s.layer == layer),
                      key=lambda s: s.l1)  # fmt: skip
    return at_layer[len(at_layer) // 2]


def corpus_text(settings) -> tuple[str, dict[str, Any]]:
    """The configured training text and its provenance."""
    if settings.corpus == "package":
        return package_text(), package_text_info()
    # Enough characters for the tokens asked for (about 4 characters per token).
    n_chars = 8 * (settings.train_tokens + settings.eval_tokens)
    return hf_dataset_text(settings.corpus, n_chars), {"source": settings.corpus}


def corpus_contexts(tokenizer, settings) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(train, eval, info)``: disjoint contexts of ``context_length`` tokens, enough
    for ``train_tokens`` and ``eval_tokens`` activation vectors (the first position of
    each context is skipped)."""
    text, info = corpus_text(settings)
    per_context = settings.context_length - SKIP_POSITIONS
    n_train = math.ceil(settings.train_tokens / per_context)
    n_eval = math.ceil(settings.eval_tokens / per_context)
    contexts = token_contexts(
        tokenizer, text, settings.context_length, n_train + n_eval, settings.seed
    )
    info = {**info, "context_length": settings.context_length, "train_contexts": n_train,
            "eval_contexts": n_eval, "train_tokens": n_train * per_context,
            "eval_tokens": n_eval * per_context}  # fmt: skip
    return contexts[:n_train], contexts[n_train:], info


def _training_settings(spec: DictionarySpec, settings, d_model: int) -> dict[str, Any]:
    """What a saved dictionary must match to be kept."""
    return {**asdict(spec), "width": settings.expansion * d_model, "lr": settings.lr,
            "batch_size": settings.batch_size, "epochs": settings.epochs,
            "train_tokens": settings.train_tokens, "context_length": settings.context_length,
            "corpus": settings.corpus, "seed": settings.seed}  # fmt: skip


def _saved(folder: Path, expected: dict[str, Any]) -> bool:
    config = folder / "dictionary.json"
    if not (config.exists() and (folder / "history.csv").exists()):
        return False
    return json.loads(config.read_text()).get("metadata", {}).get("training") == expected


def train_sweep(
    loaded, layer: int, settings, out_dir: str | Path, shard_dir: str | Path
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train every dictionary of :func:`sweep_specs` into ``out_dir/<name>/``.

    Activations are collected once for every layer needed (shards in ``shard_dir``,
    removed at the end); each dictionary trains on them brought to unit scale
    (:func:`~circuit_repro.engine.dictionary.unit_scale`, folded back into the saved
    weights) for ``epochs`` passes with
    Adam, linear warm-ups of the learning rate and the L1 coefficient over the first
    5% of steps, and dead features resampled at a quarter and at half of training.

    Returns:
        ``(history, corpus info)``: the training histories, one block per dictionary.
    """
    out_dir, shard_dir = Path(out_dir), Path(shard_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, evaluation, info = corpus_contexts(loaded.tokenizer, settings)
    save_file({"contexts": evaluation.contiguous()}, str(out_dir / EVAL_CONTEXTS))
    specs = sweep_specs(layer, settings)
    expected = {s: _training_settings(s, settings, loaded.d_model) for s in specs}
    todo = [s for s in specs if not _saved(out_dir / s.name, expected[s])]
    if todo:
        layers = sorted({s.layer for s in todo})
        log.info("collecting %d contexts at layers %s", len(train), layers)
        collect_to_shards(loaded, train, layers, shard_dir, SHARD_TOKENS,
                          skip_positions=SKIP_POSITIONS)  # fmt: skip
    histories = []
    for spec in specs:
        folder = out_dir / spec.name
        if spec in todo:
            _train_one(spec, settings, loaded.d_model, shard_dir, folder, expected[spec])
        else:
            log.info("%s: kept (trained with the same settings)", spec.name)
        history = pd.read_csv(folder / "history.csv")
        history.insert(0, "dictionary", spec.name)
        histories.append(history)
    shutil.rmtree(shard_dir, ignore_errors=True)
    return pd.concat(histories, ignore_index=True), info


def _train_one(spec, settings, d_model, shard_dir, folder, expected) -> None:
    batches = ShuffledBatches(shard_dir, spec.layer, settings.batch_size, settings.seed)
    steps = max(1, settings.epochs * batches.n_tokens // settings.batch_size)
    x, y = next(iter(ShuffledBatches(shard_dir, spec.layer, 8192, settings.seed + 1)))
    # Trained at unit scale (one learning rate for every model), folded back after.
    y_scale = unit_scale(y)
    x_scale = unit_scale(x) if spec.kind == "transcoder" else y_scale
    dictionary = SparseDictionary.from_sample(
        spec.kind, x * x_scale, y * y_scale if spec.kind == "transcoder" else None,
        settings.expansion * d_model, seed=settings.seed,
    )  # fmt: skip
    pairs = ((x * x_scale, y * y_scale) if spec.kind == "transcoder" else
             (y * y_scale, y * y_scale) for x, y in batches)  # fmt: skip
    log.info("%s: %d steps of %d vectors", spec.name, steps, settings.batch_size)
    warmup = max(1, steps // 20)
    history = train_dictionary(
        dictionary, pairs, steps, settings.lr, spec.l1, warmup_steps=warmup,
        l1_warmup_steps=warmup, resample_at=(steps // 4, steps // 2), seed=settings.seed,
        progress=True, log_every=max(1, steps // 50),
    )  # fmt: skip
    dictionary.fold_scales(x_scale, y_scale)
    scales = {"input_scale": x_scale, "output_scale": y_scale}
    save_dictionary(dictionary, folder, metadata={"training": expected, "scales": scales})
    history.to_csv(folder / "history.csv", index=False)


def load_sweep(out_dir: str | Path, layer: int, settings) -> dict[DictionarySpec, Any]:
    """The saved dictionaries of the sweep, by spec."""
    out_dir = Path(out_dir)
    return {spec: load_dictionary(out_dir / spec.name) for spec in sweep_specs(layer, settings)}


def eval_contexts(out_dir: str | Path) -> torch.Tensor:
    return load_file(str(Path(out_dir) / EVAL_CONTEXTS))["contexts"]


def eval_activations(loaded, contexts: torch.Tensor, layer: int):
    """The held-out MLP inputs and outputs of ``layer`` (in memory: a few thousand)."""
    from circuit_repro.engine.collect import collect_mlp_io

    return collect_mlp_io(loaded, contexts, [layer], skip_positions=SKIP_POSITIONS,
                          progress=False)[layer]  # fmt: skip
