# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""Direct logit attribution (DLA): each component's share of a logit difference.

The final residual stream at the read position is the sum of what every component
wrote into it (the graph's upstream nodes, :class:`~circuit_repro.engine.edges.Graph`:
the embedding, each head, or each attention layer where a post-attention norm sums
the heads first, and each MLP). With the final norm's scale frozen at its value on
the clean run, the norm is affine in the stream, so the logit difference splits
exactly into one term per component plus a *direct* term (the norm's and the
unembedding's biases):

    LD = sum_c  u . (g * P(x_c) / r)  +  u . b + (bias of the unembedding along u)

where ``u`` is the logit direction (``W_U[correct] - mean W_U[others]``), ``r`` the
norm's frozen scale, ``g`` its gain, ``b`` its bias and ``P`` the centring of a
LayerNorm (identity for RMSNorm). This is the decomposition used to find the output
nodes of the multiple-choice circuit by Lieberum et al. (2023), "Does Circuit Analysis
Interpretability Scale?", section 3.1, and in TransformerLens's
``cache.decompose_resid`` + ``apply_ln_to_stack``.

Models whose logits pass a soft cap (Gemma 2) are not affine in the stream: their DLA
is of the capped logits' argument, and :func:`direct_logit_attribution` says so in the
table's ``softcapped`` attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int

from circuit_repro.engine.edges import Graph, graph_activations
from circuit_repro.engine.forward import gather_rows
from circuit_repro.models.load import LoadedModel


@dataclass
class FrozenNorm:
    """The final norm made affine at one point: ``norm(y) = gain * P(y) + bias`` for
    every ``y`` when the scale is frozen at its value on ``x``.

    Attributes:
        gain: ``[rows, d_model]`` the norm's weight divided by its scale on each row.
        bias: ``[d_model]`` the norm's bias (zeros for RMSNorm).
        centred: Whether ``P`` subtracts the mean over ``d_model`` (LayerNorm).
        weight: ``[d_model]`` the norm's effective weight (``1 + w`` for Gemma), the
            input-independent half of ``gain``.
        scale: ``[rows, 1]`` the scale on each row, the input-dependent half.
    """

    gain: torch.Tensor
    bias: torch.Tensor
    centred: bool
    weight: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def apply(self, stack: torch.Tensor) -> torch.Tensor:
        """``gain * P(stack)`` for ``stack`` of shape ``[rows, ..., d_model]``."""
        if self.centred:
            stack = stack - stack.mean(-1, keepdim=True)
        shape = (self.gain.shape[0],) + (1,) * (stack.dim() - 2) + (self.gain.shape[1],)
        return stack * self.gain.reshape(shape)


def final_norm(hf_model) -> torch.nn.Module:
    """The norm the decoder applies to its last hidden state."""
    base = hf_model.base_model
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            # TransformerBridge wraps the model's modules; the norm's own class is inside.
            return getattr(module, "original_component", module)
    raise ValueError(f"{type(hf_model).__name__}: no final norm found (norm, ln_f, ...)")


def freeze_norm(norm: torch.nn.Module, x: Float[torch.Tensor, "rows d_model"]) -> FrozenNorm:
    """The affine map ``norm`` is on the rows ``x`` with its scale frozen there.

    LayerNorm: ``(y - mean y) / sqrt(var x + eps) * w + b``; RMSNorm:
    ``y / sqrt(mean x^2 + eps) * g`` with ``g = w``, or ``1 + w`` for Gemma's norms
    (which store the weight as an offset from one).

    Raises:
        ValueError: The norm is neither, or the frozen map does not reproduce
            ``norm(x)`` (an unknown norm: DLA would not add up).
    """
    x = x.double()
    weight = getattr(norm, "weight", None)
    d_model = x.shape[-1]
    weight = torch.ones(d_model, dtype=x.dtype) if weight is None else weight.double()
    eps = getattr(norm, "eps", None)
    eps = getattr(norm, "variance_epsilon", 1e-6) if eps is None else eps
    if isinstance(norm, torch.nn.LayerNorm):
        scale = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
        bias = norm.bias.double() if norm.bias is not None else torch.zeros(d_model).double()
        frozen = FrozenNorm(weight / scale, bias, True, weight, scale)
    else:
        scale = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        gain = 1.0 + weight if "Gemma" in type(norm).__name__ else weight
        zeros = torch.zeros(d_model, dtype=x.dtype)
        frozen = FrozenNorm(gain / scale, zeros, False, gain, scale)
    with torch.no_grad():
        expected = norm(x.to(next(iter(norm.parameters()), x).dtype)).double()
    reproduced = frozen.apply(x) + frozen.bias
    if not torch.allclose(reproduced, expected, rtol=1e-4, atol=1e-4):
        raise ValueError(
            f"{type(norm).__name__} is not a LayerNorm or RMSNorm this module knows; "
            "direct logit attribution needs the final norm's affine form"
        )
    return frozen


def logit_directions(
    hf_model, answer_ids: Int[torch.Tensor, " prompt"], other_ids: Int[torch.Tensor, "prompt k"]
) -> tuple[Float[torch.Tensor, "prompt d_model"], Float[torch.Tensor, " prompt"]]:
    """Per prompt, the unembedding direction of ``logit(answer) - mean logit(others)``
    and that difference's share of the unembedding bias (zeros without one)."""
    unembed = hf_model.get_output_embeddings()
    weight = unembed.weight.double()
    direction = weight[answer_ids] - weight[other_ids].mean(1)
    bias = getattr(unembed, "bias", None)
    offset = (
        bias.double()[answer_ids] - bias.double()[other_ids].mean(1)
        if bias is not None
        else torch.zeros(len(answer_ids), dtype=torch.float64)
    )
    return direction, offset


@torch.no_grad()
def direct_logit_attribution(
    loaded: LoadedModel,
    tokens: Int[torch.Tensor, "prompt pos"],
    read_positions: Int[torch.Tensor, " prompt"],
    answer_ids: Int[torch.Tensor, " prompt"],
    other_ids: Int[torch.Tensor, "prompt k"],
    batch_size: int = 16,
) -> tuple[pd.DataFrame, Float[torch.Tensor, "prompt node"], Float[torch.Tensor, " prompt"]]:
    """DLA of every component to ``logit(answer) - mean logit(others)`` at each
    prompt's read position.

    Returns:
        ``(table, per_prompt, total)``: ``table`` has one row per component (``node``,
        ``kind``, ``layer``, ``head``, ``dla``: the mean over prompts) and a last row
        ``direct`` (the biases); ``per_prompt[p, c]`` (the same rows, ``direct``
        last) and ``total[p]``, the logit difference the rows sum to.
    """
    graph = Graph.from_model(loaded)
    norm = final_norm(loaded.hf_model)
    softcap = getattr(loaded.hf_model.config, "final_logit_softcapping", None)
    rows, totals = [], []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        outputs, inputs = graph_activations(loaded, graph, tokens[chunk])
        read = read_positions[chunk]
        stack = gather_rows(outputs, read).double()  # [rows, upstream, d_model]
        final = gather_rows(inputs[:, :, -1], read).double()  # the logits node's input
        frozen = freeze_norm(norm, final)
        direction, offset = logit_directions(loaded.hf_model, answer_ids[chunk], other_ids[chunk])
        per_node = torch.einsum("rud,rd->ru", frozen.apply(stack), direction)
        direct = direction @ frozen.bias + offset
        rows.append(torch.cat([per_node, direct[:, None]], dim=1))
        totals.append(per_node.sum(1) + direct)
    per_prompt = torch.cat(rows)
    names = [node.name for node in graph.upstream] + ["direct"]
    table = pd.DataFrame(
        {
            "node": names,
            "kind": [node.kind for node in graph.upstream] + ["direct"],
            "layer": [node.layer for node in graph.upstream] + [-1],
            "head": [node.index for node in graph.upstream] + [None],
            "dla": per_prompt.mean(0).numpy(),
        }
    )
    table.attrs["softcapped"] = bool(softcap)
    return table, per_prompt, torch.cat(totals)


def top_share(values: Sequence[float], share: float = 0.8) -> int:
    """The fewest components whose positive DLA reaches ``share`` of all positive DLA."""
    positive = sorted((v for v in values if v > 0), reverse=True)
    total = sum(positive)
    running = 0.0
    for count, value in enumerate(positive, start=1):
        running += value
        if running >= share * total:
            return count
    return len(positive)
