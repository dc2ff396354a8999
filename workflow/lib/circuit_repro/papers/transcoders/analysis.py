# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""The analyses of Dunefsky, Chlenski & Nanda (2024) on one model, around its
greater-than MLP.

- :func:`mlp_layer_effects`, :func:`choose_layer`: which MLP the greater-than
  probability difference (Hanna et al. 2023) depends on most.
- :func:`spliced`, :func:`next_token_losses`: a dictionary in place of the MLP, and
  the next-token loss with it, with the MLP zero-ablated and clean (section 4.1, the
  faithfulness axis of the sparsity-faithfulness curves).
- :func:`top_k_curve`: greater-than with only the top-k transcoder features, or the
  top-k MLP neurons, left as they are at the final position (the others set to their
  mean), beside random sets of k (section 5.2).
- :func:`feature_connections`: how a feature of the layer before feeds a greater-than
  feature: the full attribution (gradient times activation through the whole model)
  against the paper's factorisation, an input-invariant weight
  (``W_dec[i] . W_enc[:, j]`` through the norms' gains) times an input-dependent term
  (the activation over the norms' scales) (section 3.2).
- :func:`top_activating_contexts`: the contexts where sampled features fire most.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from circuit_repro.engine.dla import freeze_norm
from circuit_repro.engine.forward import logits_at, start_at_layer
from circuit_repro.engine.hooks import cache_activations, with_hooks
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.records import TaskRecord

log = logging.getLogger(__name__)

#: Rows x positions per forward pass when sets of units are stacked.
TOKEN_BUDGET = 8192


def _mlp_in(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_in"


def _mlp_out(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_out"


def _neurons(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


# ---------------------------------------------------------------- the greater-than metric


@dataclass
class GreaterThanBatch:
    """Greater-than prompts as tensors: right-padded tokens, each prompt's final
    position, its candidate end-year tokens and their signs (+1 later, -1 earlier)."""

    tokens: Int[torch.Tensor, "prompt pos"]
    read: Int[torch.Tensor, " prompt"]
    candidate_ids: Int[torch.Tensor, "prompt candidate"]
    signs: Float[torch.Tensor, "prompt candidate"]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, index) -> GreaterThanBatch:
        return GreaterThanBatch(
            self.tokens[index], self.read[index], self.candidate_ids[index], self.signs[index]
        )


def greater_than_batch(tokenizer, records: Sequence[TaskRecord]) -> GreaterThanBatch:
    """The records of the greater-than task as one :class:`GreaterThanBatch`."""
    encoded = tokenizer([r.prompt for r in records], return_tensors="pt", padding=True)
    width = max(len(r.candidates) for r in records)
    ids = torch.zeros(len(records), width, dtype=torch.long)
    signs = torch.zeros(len(records), width)
    for row, record in enumerate(records):
        correct = set(record.correct)
        for column, candidate in enumerate(record.candidates):
            ids[row, column] = single_token_id(tokenizer, candidate)
            signs[row, column] = 1.0 if candidate in correct else -1.0
    read = torch.tensor([r.end for r in records])
    return GreaterThanBatch(encoded.input_ids, read, ids, signs)


def probability_difference(
    logits: Float[torch.Tensor, "prompt vocab"], batch: GreaterThanBatch
) -> Float[torch.Tensor, " prompt"]:
    """Hanna et al.'s metric per prompt: the probability of the later end years minus
    that of the earlier ones (softmax over the whole vocabulary); differentiable."""
    probs = torch.softmax(logits.float(), dim=-1).gather(1, batch.candidate_ids)
    return (probs * batch.signs).sum(-1)


@torch.no_grad()
def _metric(loaded, batch: GreaterThanBatch) -> torch.Tensor:
    return probability_difference(logits_at(loaded, batch.tokens, batch.read), batch)


@torch.no_grad()
def mlp_layer_effects(loaded, batch: GreaterThanBatch) -> pd.DataFrame:
    """Per layer, the drop in the mean probability difference when the MLP's output at
    the final position is replaced by its mean over the prompts there.

    Returns:
        One row per layer: ``layer``, ``clean``, ``ablated``, ``effect`` (clean minus
        ablated: positive when the MLP pushes towards later years).
    """
    names = [_mlp_out(layer) for layer in range(loaded.n_layers)]
    resid = [f"blocks.{layer}.hook_resid_pre" for layer in range(loaded.n_layers)]
    rows = torch.arange(len(batch))
    with cache_activations(loaded.bridge, names + resid) as store:
        clean = float(_metric(loaded, batch).mean())
    table = []
    for layer, name in enumerate(tqdm(names, desc="MLP ablations", unit="layer")):
        mean = store[name][rows, batch.read].mean(0)

        def replace(activation, hook, mean=mean):
            activation = activation.clone()
            activation[rows, batch.read] = mean.to(activation.dtype)
            return activation

        # Blocks before the layer are unchanged: start there from the clean stream.
        with (
            start_at_layer(loaded.bridge, layer, store[resid[layer]] if layer else None),
            with_hooks(loaded.bridge, [(name, replace)]),
        ):
            ablated = float(_metric(loaded, batch).mean())
        table.append({"layer": layer, "clean": clean, "ablated": ablated,
                      "effect": clean - ablated})  # fmt: skip
    return pd.DataFrame(table)


def choose_layer(effects: pd.DataFrame, layer: int = -1) -> int:
    """``layer``, or (``-1``) the layer whose MLP matters most to greater-than. The
    last layer is never chosen: the connections need a layer before it, and the one
    after it reads nothing but the unembedding."""
    if layer >= 0:
        return layer
    candidates = effects[effects["layer"] >= 1]
    return int(candidates.sort_values("effect", ascending=False)["layer"].iloc[0])


# ------------------------------------------------------------------------- splicing


@contextlib.contextmanager
def spliced(bridge, layer: int, dictionary, kind: str) -> Iterator[None]:
    """Run with ``dictionary`` in place of MLP ``layer``: a transcoder maps the MLP's
    input to its output; an SAE reconstructs the MLP's output from itself; ``zero``
    (``dictionary`` None) zero-ablates the MLP."""
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(activation, hook):
        inputs["x"] = activation

    def replace(activation, hook):
        if kind == "zero":
            return torch.zeros_like(activation)
        source = inputs["x"] if kind == "transcoder" else activation
        return dictionary(source.to(torch.float32))[0].to(activation.dtype)

    hooks = [(_mlp_out(layer), replace)]
    if kind == "transcoder":
        hooks.insert(0, (_mlp_in(layer), keep_input))
    with with_hooks(bridge, hooks):
        yield


@torch.no_grad()
def next_token_losses(
    loaded,
    contexts: Int[torch.Tensor, "context pos"],
    layer: int,
    dictionaries: Mapping[str, tuple[str, torch.nn.Module | None]],
    skip_positions: int = 1,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Mean next-token cross-entropy per context, clean and with each dictionary (or
    ``("zero", None)``) in place of MLP ``layer``.

    Returns:
        One row per (setting, context): ``setting`` (``clean`` or a key of
        ``dictionaries``), ``context``, ``loss``.
    """
    settings = {"clean": ("clean", None), **dictionaries}
    rows = []
    hf_model = loaded.hf_model
    for name, (kind, dictionary) in tqdm(settings.items(), desc="spliced losses", unit="run"):
        context = spliced(loaded.bridge, layer, dictionary, kind)
        with context if kind != "clean" else contextlib.nullcontext():
            for start in range(0, contexts.shape[0], batch_size):
                chunk = contexts[start : start + batch_size]
                logits = hf_model(input_ids=chunk, use_cache=False).logits.float()
                losses = torch.nn.functional.cross_entropy(
                    logits[:, skip_positions:-1].transpose(1, 2),
                    chunk[:, skip_positions + 1 :],
                    reduction="none",
                ).mean(1)
                rows += [{"setting": name, "context": start + i, "loss": float(v)}
                         for i, v in enumerate(losses)]  # fmt: skip
    return pd.DataFrame(rows)


def loss_recovered(losses: pd.DataFrame) -> pd.Series:
    """Per setting, the share of the next-token loss the zero-ablated MLP loses that
    the setting gets back: ``(zero - setting) / (zero - clean)`` (1: as good as the
    MLP, 0: as bad as no MLP)."""
    means = losses.groupby("setting")["loss"].mean()
    return (means["zero"] - means) / (means["zero"] - means["clean"])


# -------------------------------------------------------------------- top-k units


@dataclass
class UnitSpace:
    """The units of the greater-than MLP: transcoder features or MLP neurons.

    ``hook_name`` is where the units live (features are computed inside the MLP
    output's hook from the MLP's input); ``means`` are their mean activations at the
    final position over the ranking prompts."""

    kind: str  # "features" or "neurons"
    layer: int
    transcoder: torch.nn.Module | None
    means: torch.Tensor | None = None

    def hooks(self, transform):
        """Hooks applying ``transform(units) -> units`` (``[rows, pos, units]``)."""
        if self.kind == "neurons":
            return [(_neurons(self.layer), lambda activation, hook: transform(activation))]
        inputs = {}

        def keep_input(activation, hook):
            inputs["x"] = activation

        def replace(activation, hook):
            features = self.transcoder.encode(inputs["x"].to(torch.float32))
            return self.transcoder.decode(transform(features)).to(activation.dtype)

        return [(_mlp_in(self.layer), keep_input), (_mlp_out(self.layer), replace)]


def unit_attributions(
    loaded, space: UnitSpace, batch: GreaterThanBatch
) -> Float[torch.Tensor, "prompt unit"]:
    """Per prompt, each unit's attribution to the probability difference at the final
    position: ``(a - mean a) * d metric / d a`` (attribution patching from the mean),
    and sets ``space.means`` from these prompts."""
    rows = torch.arange(len(batch))
    state: dict[str, torch.Tensor] = {}

    def capture(units):
        at_read = units[rows, batch.read].detach().float().requires_grad_(True)
        state["units"] = at_read
        units = units.clone()
        units[rows, batch.read] = at_read.to(units.dtype)
        return units

    with torch.enable_grad(), with_hooks(loaded.bridge, space.hooks(capture)):
        metric = probability_difference(logits_at(loaded, batch.tokens, batch.read), batch)
        (gradient,) = torch.autograd.grad(metric.sum(), state["units"])
    units = state["units"].detach()
    space.means = units.mean(0)
    return (units - space.means) * gradient


@torch.no_grad()
def kept_unit_metric(
    loaded,
    space: UnitSpace,
    batch: GreaterThanBatch,
    masks: Float[torch.Tensor, "set unit"],
) -> Float[torch.Tensor, "set prompt"]:
    """The probability difference per prompt with, at the final position, the units a
    mask keeps left as they are and the others set to their mean (``space.means``).
    Sets are stacked along the batch; every pass starts at the MLP's layer."""
    n, length = batch.tokens.shape
    with cache_activations(loaded.bridge, [f"blocks.{space.layer}.hook_resid_pre"]) as clean:
        logits_at(loaded, batch.tokens, batch.read)
    resid = clean[f"blocks.{space.layer}.hook_resid_pre"]
    per_pass = max(1, TOKEN_BUDGET // (n * length))
    out = torch.empty(masks.shape[0], n)
    for start in range(0, masks.shape[0], per_pass):
        chunk = masks[start : start + per_pass]
        stacked = chunk.repeat_interleave(n, dim=0)  # [sets * prompts, units]
        read = batch.read.repeat(len(chunk))
        rows = torch.arange(len(read))

        def keep(units, stacked=stacked, read=read, rows=rows):
            units = units.clone()
            at_read = units[rows, read]
            means = space.means.to(units.dtype)
            units[rows, read] = means + stacked.to(units.dtype) * (at_read - means)
            return units

        repeated = batch.rows(torch.arange(n).repeat(len(chunk)))
        with (
            start_at_layer(loaded.bridge, space.layer, resid.repeat(len(chunk), 1, 1)),
            with_hooks(loaded.bridge, space.hooks(keep)),
        ):
            logits = logits_at(loaded, repeated.tokens, repeated.read)
        out[start : start + len(chunk)] = probability_difference(logits, repeated).view(
            len(chunk), n
        )
    return out


def top_k_curve(
    loaded,
    batch: GreaterThanBatch,
    layer: int,
    transcoder: torch.nn.Module,
    ks: Sequence[int],
    random_draws: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Greater-than with only the top-k features of ``transcoder`` (spliced in place of
    MLP ``layer``) or the top-k neurons of the MLP, beside random sets of k.

    The first half of the prompts ranks the units (mean attribution) and sets their
    means; the second half measures, so the ranking is not fitted to what it is judged
    on. ``recovered`` is ``(m_k - m_0) / (m_all - m_0)`` of the mean probability
    difference, where ``m_0`` has every unit at its mean and ``m_all`` none.

    Returns:
        ``(curve, per_prompt)``: one row per (units, selection, k) with ``metric`` and
        ``recovered`` (random: the mean over draws; ``attrs["top_features"]``: the
        features by rank); per prompt, the probability difference of every set
        (``units, selection, k, draw, prompt, metric``).
    """
    half = len(batch) // 2
    rank_on, measure_on = batch.rows(slice(0, half)), batch.rows(slice(half, None))
    generator = np.random.default_rng(seed)
    curves, per_prompt = [], []
    for kind in ("features", "neurons"):
        space = UnitSpace(kind, layer, transcoder if kind == "features" else None)
        attribution = unit_attributions(loaded, space, rank_on).mean(0)
        order = torch.argsort(attribution, descending=True)
        if kind == "features":
            top_features = order[: max(ks)].tolist()
        n_units = attribution.shape[0]
        labels, masks = (
            [("none", 0, 0), ("all", n_units, 0)],
            [
                torch.zeros(n_units),
                torch.ones(n_units),
            ],
        )
        for k in ks:
            k = min(k, n_units)
            mask = torch.zeros(n_units)
            mask[order[:k]] = 1.0
            labels.append(("top", k, 0))
            masks.append(mask)
            for draw in range(random_draws):
                mask = torch.zeros(n_units)
                mask[torch.from_numpy(generator.choice(n_units, k, replace=False))] = 1.0
                labels.append(("random", k, draw))
                masks.append(mask)
        log.info("%s: %d sets of %d units on %d prompts", kind, len(masks), n_units,
                 len(measure_on))  # fmt: skip
        metrics = kept_unit_metric(loaded, space, measure_on, torch.stack(masks))
        for (selection, k, draw), values in zip(labels, metrics, strict=True):
            per_prompt += [{"units": kind, "selection": selection, "k": k, "draw": draw,
                            "prompt": p, "metric": float(v)} for p, v in enumerate(values)]  # fmt: skip
    table = pd.DataFrame(per_prompt)
    for kind, rows in table.groupby("units"):
        means = rows.groupby(["selection", "k", "draw"])["metric"].mean()
        none, full = means[("none", 0, 0)], means.xs("all", level="selection").iloc[0]
        for (selection, k), values in means.groupby(level=["selection", "k"]):
            curves.append({"units": kind, "selection": selection, "k": k,
                           "metric": float(values.mean()),
                           "recovered": float((values.mean() - none) / (full - none))})  # fmt: skip
    curve = pd.DataFrame(curves)
    curve.attrs["top_features"] = top_features  # the ranking, for the connections
    return curve, table


# ------------------------------------------------------------------- connections


class _Stop(Exception):
    """Raised once the downstream features are computed."""


def _norm_module(bridge, layer: int, name: str):
    module = getattr(bridge.blocks[layer], name, None)
    return None if module is None else getattr(module, "original_component", module)


def _centre(x: torch.Tensor, frozen) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True) if frozen.centred else x


def feature_connections(
    loaded,
    batch: GreaterThanBatch,
    layer: int,
    upstream: torch.nn.Module,
    downstream: torch.nn.Module,
    downstream_features: Sequence[int],
) -> pd.DataFrame:
    """How the transcoder features of MLP ``layer - 1`` feed chosen features of MLP
    ``layer`` at the final position, with both transcoders spliced.

    ``attribution`` is upstream feature ``i``'s activation times the gradient of
    downstream feature ``j``'s pre-activation with respect to it, through everything
    between (attention, live norms). The paper's factorisation follows the direct path
    through the residual stream with the norms' scales frozen: ``factorised =
    dependent * invariant``, where ``invariant`` is ``W_dec[i]`` through the norms'
    weights (and Gemma's post-MLP norm), dotted with ``W_enc[:, j]``: weights alone;
    ``dependent`` is ``f_i`` over the norms' scales on the prompt.

    Returns:
        One row per (prompt, j, i) with upstream feature ``i`` active on the prompt:
        ``prompt, downstream, upstream, activation, invariant, dependent, factorised,
        attribution``.
    """
    bridge = loaded.bridge
    rows = torch.arange(len(batch))
    state: dict[str, torch.Tensor] = {}
    before = layer - 1

    def upstream_in(activation, hook):
        state["x_up"] = activation

    def upstream_out(activation, hook):
        state["y_up"] = activation.detach()
        features = upstream.encode(state["x_up"].float()).detach()
        at_read = features[rows, batch.read].clone().requires_grad_(True)
        state["f_up"] = at_read
        features = features.clone()
        features[rows, batch.read] = at_read
        return upstream.decode(features).to(activation.dtype)

    def downstream_in(activation, hook):
        x = activation[rows, batch.read].float()
        state["pre"] = (x - downstream.b_in) @ downstream.W_enc + downstream.b_enc
        raise _Stop

    pre_norm_input = f"blocks.{layer}.ln2.hook_in"
    hooks = [(_mlp_in(before), upstream_in), (_mlp_out(before), upstream_out),
             (_mlp_in(layer), downstream_in)]  # fmt: skip
    with torch.enable_grad(), cache_activations(bridge, [pre_norm_input]) as store:
        with with_hooks(bridge, hooks), contextlib.suppress(_Stop):
            loaded.hf_model.base_model(input_ids=batch.tokens, use_cache=False)
        pre, f_up = state["pre"], state["f_up"]
        gradients = [torch.autograd.grad(pre[:, j].sum(), f_up, retain_graph=True)[0]
                     for j in downstream_features]  # fmt: skip
    f_up = f_up.detach().double()
    # The direct path, norms frozen: x -> (Gemma: P(x) * w_post / r_post) -> P(.) *
    # w_pre / r_pre -> . W_enc[:, j]. Weights give the invariant part, scales the
    # dependent part.
    direction = upstream.W_dec.detach().double()  # [width_up, d_model]
    scale = torch.ones(len(batch), dtype=torch.float64)
    post = _norm_module(bridge, before, "ln2_post")
    if post is not None:
        # The post-MLP norm sees the MLP's output: the spliced transcoder's.
        frozen = freeze_norm(post, state["y_up"][rows, batch.read])
        direction = _centre(direction, frozen) * frozen.weight
        scale = scale * frozen.scale[:, 0]
    frozen = freeze_norm(
        _norm_module(bridge, layer, "ln2"), store[pre_norm_input][rows, batch.read]
    )
    direction = _centre(direction, frozen) * frozen.weight
    scale = scale * frozen.scale[:, 0]
    # [width_up, width_down] and [prompt, width_up]; the norms' weights are parameters.
    invariant = (direction @ downstream.W_enc.double()).detach()
    dependent = (f_up / scale[:, None]).detach()
    table = []
    for j, gradient in zip(downstream_features, gradients, strict=True):
        attribution = f_up * gradient.double()
        for prompt, upstream_index in torch.nonzero(f_up > 0).tolist():
            value = float(dependent[prompt, upstream_index] * invariant[upstream_index, j])
            table.append({"prompt": prompt, "downstream": j, "upstream": upstream_index,
                          "activation": float(f_up[prompt, upstream_index]),
                          "invariant": float(invariant[upstream_index, j]),
                          "dependent": float(dependent[prompt, upstream_index]),
                          "factorised": value,
                          "attribution": float(attribution[prompt, upstream_index])})  # fmt: skip
    return pd.DataFrame(table)


def explained_share(connections: pd.DataFrame) -> float:
    """How much of the full attributions' variance the factorised terms explain:
    ``1 - sum (attribution - factorised)^2 / sum (attribution - mean)^2``."""
    full = connections["attribution"].to_numpy(np.float64)
    residual = full - connections["factorised"].to_numpy(np.float64)
    total = ((full - full.mean()) ** 2).sum()
    return float(1.0 - (residual**2).sum() / total) if total > 0 else float("nan")


# -------------------------------------------------------------------- inspection


@torch.no_grad()
def top_activating_contexts(
    loaded,
    contexts: Int[torch.Tensor, "context pos"],
    layer: int,
    dictionary: torch.nn.Module,
    kind: str,
    features: Sequence[int],
    n: int,
    skip_positions: int = 1,
    window: int = 12,
    batch_size: int = 16,
) -> pd.DataFrame:
    """For each feature, the ``n`` contexts where it fires most (its largest activation
    in the context), with the text around that token and the token marked.

    Returns:
        One row per (feature, rank): ``feature, rank, activation, token, text``.
    """
    site = _mlp_in(layer) if kind == "transcoder" else _mlp_out(layer)
    best = torch.full((contexts.shape[0], len(features)), -1.0)
    where = torch.zeros((contexts.shape[0], len(features)), dtype=torch.long)
    index = torch.tensor(list(features))
    for start in range(0, contexts.shape[0], batch_size):
        chunk = contexts[start : start + batch_size]
        with cache_activations(loaded.bridge, [site]) as store:
            loaded.hf_model.base_model(input_ids=chunk, use_cache=False)
        activations = dictionary.encode(store[site].float())[:, skip_positions:, index]
        values, positions = activations.max(1)
        best[start : start + len(chunk)] = values
        where[start : start + len(chunk)] = positions + skip_positions
    tokenizer = loaded.tokenizer
    rows = []
    for column, feature in enumerate(features):
        order = torch.argsort(best[:, column], descending=True)[:n]
        for rank, context in enumerate(order.tolist()):
            position = int(where[context, column])
            ids = contexts[context].tolist()
            before = tokenizer.decode(ids[max(0, position - window) : position])
            token = tokenizer.decode(ids[position : position + 1])
            after = tokenizer.decode(ids[position + 1 : position + 1 + window // 3])
            rows.append({"feature": int(feature), "rank": rank,
                         "activation": float(best[context, column]), "token": token,
                         "text": f"{before}[[{token}]]{after}".replace("\n", " ")})  # fmt: skip
    return pd.DataFrame(rows)
