# (jaxtyping shape strings such as "token d_model" are not forward references)
"""MLP inputs and outputs over a corpus: the training pairs of transcoders.

A transcoder (Dunefsky, Chlenski & Nanda 2024) learns to map a block's MLP input to its
MLP output. On the bridge these are ``blocks.L.mlp.hook_in`` (the MLP's input, which
is the output of the pre-MLP norm ``ln2``) and ``blocks.L.mlp.hook_out`` (what the MLP
module returns; for Gemma 3 this is before the post-feedforward norm ``ln2_post``, whose
output is ``blocks.L.hook_mlp_out``). Running ``bridge.blocks[L].mlp`` on the input
reproduces the output.

- :func:`collect_mlp_io`: the pairs of some layers, in memory.
- :func:`collect_to_shards`: the same, streamed to safetensors shards on disk with
  bounded memory; :func:`load_shards` reads a layer back whole (an evaluation set) and
  :class:`ShuffledBatches` yields shuffled training batches from the shards.
- :func:`collection_throughput`: collected tokens per second (for benchmarks).

Forward passes stop at the deepest requested MLP output
(:func:`~circuit_repro.engine.forward.stop_at`), so later blocks, the final norm and the
unembedding never run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from circuit_repro.engine.forward import stop_at
from circuit_repro.engine.hooks import with_hooks

if TYPE_CHECKING:
    from circuit_repro.models.load import LoadedModel

#: File that lists a shard folder's contents; written last.
MANIFEST = "manifest.json"

MlpPairs = tuple[Float[torch.Tensor, "token d_model"], Float[torch.Tensor, "token d_model"]]


def mlp_hook_names(layer: int) -> tuple[str, str]:
    """``(input, output)`` hook names of block ``layer``'s MLP."""
    return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out"


def _check_request(loaded: LoadedModel, contexts: torch.Tensor, layers: Sequence[int], skip):
    if contexts.dim() != 2 or not len(contexts):
        raise ValueError(
            f"contexts must be [n_contexts, context_length] with n_contexts > 0, not "
            f"{tuple(contexts.shape)}"
        )
    if not layers:
        raise ValueError("no layers requested")
    bad = [layer for layer in layers if not 0 <= layer < loaded.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a {loaded.n_layers}-layer model")
    if not 0 <= skip < contexts.shape[1]:
        raise ValueError(
            f"skip_positions={skip} leaves no position of contexts of length {contexts.shape[1]}"
        )


def iter_mlp_io(
    loaded: LoadedModel,
    contexts: Int[torch.Tensor, "context pos"],
    layers: Sequence[int],
    batch_size: int = 16,
    skip_positions: int = 1,
    progress: bool = True,
) -> Iterator[dict[int, MlpPairs]]:
    """:func:`collect_mlp_io` one batch of contexts at a time: per batch,
    ``{layer: (x, y)}`` with ``batch * (context_length - skip_positions)`` rows."""
    layers = sorted(set(layers))
    _check_request(loaded, contexts, layers, skip_positions)
    bridge = loaded.bridge
    device = loaded.hf_model.device
    d_model = bridge.cfg.d_model
    recorded: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def record(activation, hook):
            kept = activation[:, skip_positions:].reshape(-1, d_model)
            recorded[name] = kept.detach().to("cpu", torch.float32)

        return record

    hooks = [(name, recorder(name)) for layer in layers for name in mlp_hook_names(layer)]
    starts = range(0, len(contexts), batch_size)
    for start in tqdm(
        starts, desc="collecting MLP activations", disable=not progress, unit="batch"
    ):
        batch = contexts[start : start + batch_size].to(device)
        recorded.clear()
        with (
            torch.no_grad(),
            with_hooks(bridge, hooks),
            stop_at(bridge, mlp_hook_names(layers[-1])[1]) as stopped,
        ):
            loaded.hf_model.base_model(input_ids=batch, use_cache=False)
        if not stopped():
            raise RuntimeError(f"the forward pass never reached {mlp_hook_names(layers[-1])[1]}")
        yield {layer: tuple(recorded[name] for name in mlp_hook_names(layer)) for layer in layers}


def collect_mlp_io(
    loaded: LoadedModel,
    contexts: Int[torch.Tensor, "context pos"],
    layers: Sequence[int],
    batch_size: int = 16,
    skip_positions: int = 1,
    progress: bool = True,
) -> dict[int, MlpPairs]:
    """MLP inputs ``x`` and outputs ``y`` of each layer in ``layers`` over ``contexts``.

    Args:
        loaded: A model with a bridge.
        contexts: Token windows, ``[n_contexts, context_length]`` (see
            :func:`circuit_repro.tasks.corpus.token_contexts`).
        layers: Blocks to read.
        batch_size: Contexts per forward pass.
        skip_positions: Leading positions of every context left out: the first token's
            activations are outliers (huge norms, an attention sink) that a transcoder
            should not spend capacity on.
        progress: Show a progress bar over batches.

    Returns:
        ``{layer: (x, y)}``, each ``[n_contexts * (context_length - skip_positions),
        d_model]`` float32 on the CPU, rows in (context, position) order. The forward
        passes run without gradients and stop after the deepest layer's MLP output.
    """
    batches = list(iter_mlp_io(loaded, contexts, layers, batch_size, skip_positions, progress))
    return {
        layer: (
            torch.cat([batch[layer][0] for batch in batches]),
            torch.cat([batch[layer][1] for batch in batches]),
        )
        for layer in batches[0]
    }


def collection_throughput(
    loaded: LoadedModel,
    contexts: Int[torch.Tensor, "context pos"],
    layer: int,
    batch_size: int = 16,
    skip_positions: int = 1,
) -> float:
    """Collected (MLP input, output) rows per second for ``layer`` over ``contexts``.

    The first batch runs once untimed (first-call costs); the whole of ``contexts`` is
    then collected and timed.
    """
    for _ in iter_mlp_io(loaded, contexts[:batch_size], [layer], batch_size, skip_positions, False):
        pass
    started = time.perf_counter()
    pairs = collect_mlp_io(loaded, contexts, [layer], batch_size, skip_positions, progress=False)
    seconds = time.perf_counter() - started
    return len(pairs[layer][0]) / seconds


# ------------------------------------------------------------------------- shards


def _shard_name(index: int) -> str:
    return f"shard_{index:04d}.safetensors"


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def collect_to_shards(
    loaded: LoadedModel,
    contexts: Int[torch.Tensor, "context pos"],
    layers: Sequence[int],
    out_dir: str | Path,
    shard_tokens: int,
    batch_size: int = 16,
    skip_positions: int = 1,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect as :func:`collect_mlp_io`, writing shards instead of holding everything.

    ``out_dir`` receives ``shard_0000.safetensors``, ``shard_0001.safetensors`` ... of at
    most ``shard_tokens`` rows each (tensors ``x.L`` and ``y.L`` per layer, rows in
    (context, position) order across shards) and then :data:`MANIFEST` (``layers``,
    ``n_tokens``, ``d_model``, ``shards`` with each file's row count, ``context_length``,
    ``n_contexts``, ``skip_positions``, ``dtype``, ``model_id``). Memory holds one
    shard and one batch. Every file is written to a temporary name and renamed, and a
    previous manifest is removed first, so an interrupted run leaves no manifest; shard
    files of an earlier run that the new manifest does not list are deleted.

    Args:
        shard_tokens: Rows per shard.
        dtype: Storage type (``torch.bfloat16`` halves the disk space); readers return
            float32.

    Returns:
        The manifest.
    """
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be at least 1, not {shard_tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    layers = sorted(set(layers))
    d_model = loaded.bridge.cfg.d_model
    keys = [f"{kind}.{layer}" for layer in layers for kind in ("x", "y")]
    buffer = {key: torch.empty(shard_tokens, d_model, dtype=dtype) for key in keys}
    filled = 0
    shards: list[dict[str, Any]] = []

    def flush(n_rows: int) -> None:
        name = _shard_name(len(shards))
        tmp = out_dir / (name + ".tmp")
        save_file({key: buffer[key][:n_rows].contiguous() for key in keys}, str(tmp))
        os.replace(tmp, out_dir / name)
        shards.append({"file": name, "n_tokens": n_rows})

    for batch in iter_mlp_io(loaded, contexts, layers, batch_size, skip_positions, progress):
        values = {
            f"{kind}.{layer}": batch[layer][i] for layer in layers for i, kind in enumerate("xy")
        }
        n_rows = len(values[keys[0]])
        offset = 0
        while offset < n_rows:
            take = min(shard_tokens - filled, n_rows - offset)
            for key in keys:
                buffer[key][filled : filled + take] = values[key][offset : offset + take]
            filled += take
            offset += take
            if filled == shard_tokens:
                flush(filled)
                filled = 0
    if filled:
        flush(filled)

    listed = {shard["file"] for shard in shards}
    for stale in out_dir.glob("shard_*.safetensors"):
        if stale.name not in listed:
            stale.unlink()
    manifest = {
        "layers": layers,
        "n_tokens": sum(shard["n_tokens"] for shard in shards),
        "d_model": d_model,
        "shards": shards,
        "context_length": int(contexts.shape[1]),
        "n_contexts": int(contexts.shape[0]),
        "skip_positions": skip_positions,
        "dtype": str(dtype).removeprefix("torch."),
        "model_id": loaded.model_id,
    }
    _atomic_json(out_dir / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a shard folder written by :func:`collect_to_shards`."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {out_dir} holds no finished collection "
            "(collect_to_shards writes the manifest last)"
        )
    return json.loads(path.read_text())


def _layer_keys(manifest: dict[str, Any], out_dir: Path, layer: int) -> tuple[str, str]:
    if layer not in manifest["layers"]:
        raise KeyError(f"{out_dir} holds layers {manifest['layers']}, not {layer}")
    return f"x.{layer}", f"y.{layer}"


def _read_shard(path: Path, keys: tuple[str, str]) -> MlpPairs:
    with safe_open(str(path), framework="pt") as shard:
        x, y = (shard.get_tensor(key).float() for key in keys)
    return x, y


def load_shards(out_dir: str | Path, layer: int) -> MlpPairs:
    """Every row of ``layer`` in a shard folder, ``(x, y)`` float32, in collection order."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    keys = _layer_keys(manifest, out_dir, layer)
    pairs = [_read_shard(out_dir / shard["file"], keys) for shard in manifest["shards"]]
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


class ShuffledBatches:
    """Shuffled ``(x, y)`` batches of one layer from a shard folder, float32.

    Each epoch visits the shards in a random order, ``buffer_shards`` at a time: their
    rows are loaded together, shuffled and cut into batches of ``batch_size``, rows left
    over carried into the next group, so every batch but an epoch's last is full and
    rows of different shards share batches. Every row appears exactly once per epoch.
    Memory holds ``buffer_shards`` shards (plus a batch).

    Iterating runs ``epochs`` epochs, or forever when ``epochs`` is None; two iterations
    with the same ``seed`` give the same batches.
    """

    def __init__(
        self,
        out_dir: str | Path,
        layer: int,
        batch_size: int,
        seed: int,
        buffer_shards: int = 2,
        epochs: int | None = None,
    ):
        if batch_size < 1 or buffer_shards < 1:
            raise ValueError("batch_size and buffer_shards must be at least 1")
        self.out_dir = Path(out_dir)
        self.layer = layer
        self.batch_size = batch_size
        self.seed = seed
        self.buffer_shards = buffer_shards
        self.epochs = epochs
        self.manifest = read_manifest(self.out_dir)
        self._keys = _layer_keys(self.manifest, self.out_dir, layer)

    @property
    def n_tokens(self) -> int:
        """Rows per epoch."""
        return self.manifest["n_tokens"]

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.n_tokens // self.batch_size)

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless ShuffledBatches (epochs=None) has no length")
        return self.epochs * self.batches_per_epoch

    def _epoch(self, generator: torch.Generator) -> Iterator[MlpPairs]:
        shards = self.manifest["shards"]
        order = torch.randperm(len(shards), generator=generator).tolist()
        carry_x = carry_y = None
        for start in range(0, len(order), self.buffer_shards):
            group = [self._read(shards[i]) for i in order[start : start + self.buffer_shards]]
            x = torch.cat([g[0] for g in group])
            y = torch.cat([g[1] for g in group])
            permutation = torch.randperm(len(x), generator=generator)
            x, y = x[permutation], y[permutation]
            if carry_x is not None:
                x, y = torch.cat([carry_x, x]), torch.cat([carry_y, y])
            full = len(x) - len(x) % self.batch_size
            for i in range(0, full, self.batch_size):
                yield x[i : i + self.batch_size], y[i : i + self.batch_size]
            carry_x, carry_y = x[full:], y[full:]
        if carry_x is not None and len(carry_x):
            yield carry_x, carry_y

    def _read(self, shard: dict[str, Any]) -> MlpPairs:
        return _read_shard(self.out_dir / shard["file"], self._keys)

    def __iter__(self) -> Iterator[MlpPairs]:
        generator = torch.Generator().manual_seed(self.seed)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            yield from self._epoch(generator)
            epoch += 1
