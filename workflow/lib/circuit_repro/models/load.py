"""Load a prepared model for analysis (see :mod:`circuit_repro.models.prepare`).

:func:`load_model` and :func:`load_bridge` read a prepared folder back, on CPU or CUDA,
in fp32 or bf16, and wrap it in a TransformerLens ``TransformerBridge`` for hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuit_repro.models.fetch import ModelUnavailableError
from circuit_repro.models.prepare import PROVENANCE
from circuit_repro.models.verify import verify_prepared
from circuit_repro.timing import phase

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self._cfg.d_model

    @property
    def d_head(self) -> int:
        """Width of one head's query, key, value and output ``z``."""
        return self._cfg.d_head


# --------------------------------------------------------------------------- fetch


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
    verify_prepared(model_dir)


@phase("model_load")
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


@phase("model_load")
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


@phase("model_load")
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
