"""The tables of the ``transcoders_evaluate`` and ``transcoders_greater_than`` rules,
from a model and its trained sweep (:mod:`.training`).

- :func:`evaluate_sweep`: per dictionary at the greater-than MLP, L0, FVU, dead
  features and the next-token loss with it spliced in (``sweep``, per context
  ``losses``); the top-activating contexts of sampled features (``features``).
- :func:`greater_than_tables`: the top-k curves (``top_k``, ``top_k_prompts``) and the
  feature connections (``connections``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.dictionary import evaluate_dictionary, load_dictionary
from circuit_repro.papers.transcoders.analysis import (
    feature_connections,
    greater_than_batch,
    loss_recovered,
    next_token_losses,
    top_activating_contexts,
    top_k_curve,
)
from circuit_repro.papers.transcoders.training import (
    SKIP_POSITIONS,
    DictionarySpec,
    eval_activations,
    eval_contexts,
)
from circuit_repro.tasks.records import TaskRecord

log = logging.getLogger(__name__)

#: Columns of the connections table (written even when no feature is active).
CONNECTION_COLUMNS = ["prompt", "downstream", "upstream", "activation", "invariant",
                      "dependent", "factorised", "attribution"]  # fmt: skip


def saved_sweep(folder: str | Path) -> dict[DictionarySpec, torch.nn.Module]:
    """Every dictionary saved under ``folder``, by its spec (from its metadata)."""
    sweep = {}
    for config in sorted(Path(folder).glob("*/dictionary.json")):
        training = json.loads(config.read_text())["metadata"]["training"]
        spec = DictionarySpec(training["kind"], training["layer"], training["l1"])
        sweep[spec] = load_dictionary(config.parent)
    if not sweep:
        raise FileNotFoundError(f"{folder}: no trained dictionaries; rerun transcoders_train")
    return sweep


def _main_layer(sweep) -> int:
    return max(spec.layer for spec in sweep)


def _middle(sweep, layer: int, kind: str = "transcoder") -> DictionarySpec:
    specs = sorted((s for s in sweep if s.kind == kind and s.layer == layer), key=lambda s: s.l1)
    return specs[len(specs) // 2]


@torch.no_grad()
def evaluate_sweep(loaded, folder: str | Path, settings) -> dict[str, pd.DataFrame]:
    """``sweep``, ``losses`` and ``features`` (see the module docstring) on the held-out
    contexts saved with the sweep."""
    sweep = saved_sweep(folder)
    layer = _main_layer(sweep)
    contexts = eval_contexts(folder)
    x, y = eval_activations(loaded, contexts, layer)
    at_layer = {spec: d for spec, d in sweep.items() if spec.layer == layer}
    losses = next_token_losses(
        loaded, contexts, layer,
        {"zero": ("zero", None), **{s.name: (s.kind, d) for s, d in at_layer.items()}},
        skip_positions=SKIP_POSITIONS,
    )  # fmt: skip
    recovered = loss_recovered(losses)
    means = losses.groupby("setting")["loss"].mean()
    rows = []
    for spec, dictionary in at_layer.items():
        metrics = evaluate_dictionary(dictionary, x if spec.kind == "transcoder" else y, y)
        metrics["feature_l1"] = metrics.pop("l1")  # mean sum |f|, not the coefficient
        rows.append({"setting": spec.name, "kind": spec.kind, "layer": layer, "l1": spec.l1,
                     "width": dictionary.W_dec.shape[0], **metrics,
                     "loss": float(means[spec.name]),
                     "recovered": float(recovered[spec.name])})  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["kind", "l1"], ignore_index=True)
    table.attrs = {}
    for name in ("clean", "zero"):
        table[f"{name}_loss"] = float(means[name])
    middle = _middle(sweep, layer)
    transcoder = sweep[middle]
    alive = torch.nonzero(transcoder.encode(x).amax(0) > 0)[:, 0].numpy()
    generator = np.random.default_rng(settings.seed)
    sample = generator.choice(alive, min(settings.inspected_features, len(alive)), replace=False)
    features = top_activating_contexts(loaded, contexts, layer, transcoder, "transcoder",
                                       sorted(sample.tolist()), settings.top_contexts,
                                       skip_positions=SKIP_POSITIONS)  # fmt: skip
    features.insert(0, "dictionary", middle.name)
    return {"sweep": table, "losses": losses, "features": features}


def greater_than_tables(
    loaded, records: Sequence[TaskRecord], folder: str | Path, settings
) -> dict[str, pd.DataFrame]:
    """``top_k``, ``top_k_prompts`` and ``connections`` for the middle transcoder of the
    greater-than MLP (and the transcoder of the layer before)."""
    sweep = saved_sweep(folder)
    layer = _main_layer(sweep)
    middle = _middle(sweep, layer)
    batch = greater_than_batch(loaded.tokenizer, records)
    curve, per_prompt = top_k_curve(loaded, batch, layer, sweep[middle], settings.top_k,
                                    settings.random_draws, settings.seed)  # fmt: skip
    curve.insert(0, "dictionary", middle.name)
    upstream = [s for s in sweep if s.kind == "transcoder" and s.layer == layer - 1]
    connections = pd.DataFrame(columns=CONNECTION_COLUMNS)
    if upstream:
        top = curve.attrs["top_features"][: settings.connection_features]
        connections = feature_connections(loaded, batch, layer, sweep[upstream[0]],
                                          sweep[middle], top)  # fmt: skip
        connections = connections.reindex(columns=CONNECTION_COLUMNS)
    curve.attrs = {}
    return {"top_k": curve, "top_k_prompts": per_prompt, "connections": connections}
