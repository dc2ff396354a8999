# (jaxtyping shape strings such as "batch d_in" are not forward references)
"""Sparse dictionaries: transcoders and sparse autoencoders (SAEs), and their training.

Dunefsky, Chlenski and Nanda (2024), "Transcoders Find Interpretable LLM Feature
Circuits" (arXiv 2406.11944), replace an MLP sublayer by a *transcoder*: a wide,
sparsely activating ReLU layer that reads the MLP's input (after the pre-MLP norm) and
predicts the MLP's output,

    f = ReLU(W_enc (x - b_in) + b_enc),    y_hat = W_dec f + b_out.

An SAE is the same map trained to reconstruct its own input (``x = y``), with the input
bias tied to the output bias (``b_in`` is ``b_out``). Both are trained on a normalised
reconstruction error plus an L1 penalty on the feature activations (the paper and the
authors' training code):

    loss = mean_t ||y_hat_t - y_t||^2 / (d_out ||y_t||) + l1 * mean_t sum_i |f_ti|.

The ``1 / d_out`` matches the authors' code, which averages the normalised squared
error over tokens *and* output components: their L1 coefficient (1.4e-4 for GPT-2 with a
width of 32 x d_model, Adam at lr 4e-4, 4096 tokens a batch) carries over only with this
scaling.

- :class:`SparseDictionary` is the module; :meth:`SparseDictionary.from_sample` builds a
  transcoder or an SAE initialised from a sample of the data;
- :func:`train_dictionary` trains one with Adam, warm-ups of the learning rate and of
  the L1 coefficient, unit-norm decoder rows and resampling of dead features (Bricken et
  al. 2023, "Towards Monosemanticity", appendix "Neuron resampling");
- :func:`evaluate_dictionary` gives L0, the fraction of variance unexplained and the dead
  features on a held-out set;
- :func:`save_dictionary` and :func:`load_dictionary` write and read one as a
  safetensors file and a JSON config.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

KINDS = ("transcoder", "sae")

#: File names inside a saved dictionary's folder.
WEIGHTS_FILE = "dictionary.safetensors"
CONFIG_FILE = "dictionary.json"

#: Resampled encoder columns get this fraction of the mean norm of the alive ones
#: ("Towards Monosemanticity" uses 0.2: small enough not to disturb the other features
#: while the new one finds its place).
RESAMPLE_ENCODER_SCALE = 0.2

# Floor of a norm that is divided by: a token whose target is exactly zero (which real
# MLP outputs never are) must not turn the loss into inf or nan.
_EPS = 1e-8


class SparseDictionary(torch.nn.Module):
    """A ReLU sparse dictionary: a transcoder (``x -> y``) or an SAE (``x -> x``).

    Parameters: ``W_enc [d_in, width]``, ``b_enc [width]``, ``W_dec [width, d_out]``,
    ``b_out [d_out]`` and ``b_in [d_in]``; with ``tied_bias`` (an SAE), ``b_in`` is the
    same parameter as ``b_out`` and appears once in :meth:`parameters` and in the state
    dict (as ``b_out``).

    Attributes:
        kind: ``"transcoder"`` or ``"sae"`` (by default ``"sae"`` exactly when the bias
            is tied).
        metadata: Free-form JSON-serialisable facts (layer, l1, seed, steps...) that
            :func:`save_dictionary` writes along and :func:`load_dictionary` restores.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        width: int,
        tied_bias: bool,
        kind: str | None = None,
    ) -> None:
        super().__init__()
        if tied_bias and d_in != d_out:
            raise ValueError(f"a tied bias needs d_in == d_out, not {d_in} and {d_out}")
        kind = kind if kind is not None else ("sae" if tied_bias else "transcoder")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.d_in, self.d_out, self.width = d_in, d_out, width
        self.tied_bias = tied_bias
        self.kind = kind
        self.metadata: dict[str, Any] = {}
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, width))
        self.b_enc = torch.nn.Parameter(torch.zeros(width))
        self.W_dec = torch.nn.Parameter(torch.zeros(width, d_out))
        self.b_out = torch.nn.Parameter(torch.zeros(d_out))
        if not tied_bias:
            self.b_in = torch.nn.Parameter(torch.zeros(d_in))

    def __getattr__(self, name: str) -> Any:
        # A tied SAE has no parameter of its own named b_in: it reads b_out, so that one
        # parameter (one Adam state, one state-dict entry) serves both ends.
        if name == "b_in" and self.__dict__.get("tied_bias"):
            return super().__getattr__("b_out")
        return super().__getattr__(name)

    @classmethod
    def from_sample(
        cls,
        kind: str,
        x: Float[torch.Tensor, "n d_in"],
        y: Float[torch.Tensor, "n d_out"] | None,
        width: int,
        *,
        seed: int = 0,
    ) -> SparseDictionary:
        """A transcoder or an SAE (``kind``) initialised from a sample of its data.

        - decoder rows: independent random directions (normalised Gaussians from a
          ``torch.Generator`` seeded with ``seed``), so every feature starts at unit norm;
        - encoder: for an SAE, ``W_enc = W_dec.T`` (each feature starts by detecting the
          direction it writes, as in "Towards Monosemanticity"); for a transcoder,
          columns are further independent random unit vectors. Tying the encoder to
          the decoder would mean nothing there even when ``d_in == d_out``: the MLP's
          input and output are different spaces (a normalised residual stream and a
          write into it), so a decoder direction is no better guess of what a feature
          reads than any other. Unit columns give pre-activations of the same scale as
          the SAE's;
        - ``b_in`` = mean of ``x``, ``b_out`` = mean of ``y`` (for an SAE the one shared
          bias is the mean of ``x``), so that the dictionary starts by predicting the
          mean and its features only need to explain the deviations; ``b_enc = 0``.

        Args:
            kind: ``"transcoder"`` or ``"sae"``.
            x: A sample of inputs (rows are tokens).
            y: The matching targets (MLP outputs) for a transcoder; ignored (taken as
                ``x``) for an SAE.
            width: Number of features.
            seed: Seed of the random directions.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if kind == "sae":
            y = x
        elif y is None:
            raise ValueError("a transcoder needs a sample of targets y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have {x.shape[0]} and {y.shape[0]} rows")
        d_in, d_out = x.shape[-1], y.shape[-1]
        dictionary = cls(d_in, d_out, width, tied_bias=kind == "sae", kind=kind)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            decoder = _unit_rows(torch.randn(width, d_out, generator=generator))
            dictionary.W_dec.copy_(decoder)
            if kind == "sae":
                dictionary.W_enc.copy_(decoder.T)
            else:
                dictionary.W_enc.copy_(_unit_rows(torch.randn(width, d_in, generator=generator)).T)
            dictionary.b_out.copy_(y.double().mean(0).float())
            if kind == "transcoder":
                dictionary.b_in.copy_(x.double().mean(0).float())
        return dictionary.to(x.device)

    def encode(self, x: Float[torch.Tensor, "batch d_in"]) -> Float[torch.Tensor, "batch width"]:
        """Feature activations ``f = ReLU((x - b_in) W_enc + b_enc)``."""
        return torch.relu((x - self.b_in) @ self.W_enc + self.b_enc)

    def decode(self, f: Float[torch.Tensor, "batch width"]) -> Float[torch.Tensor, "batch d_out"]:
        """The prediction ``y_hat = f W_dec + b_out``."""
        return f @ self.W_dec + self.b_out

    def forward(
        self, x: Float[torch.Tensor, "batch d_in"]
    ) -> tuple[Float[torch.Tensor, "batch d_out"], Float[torch.Tensor, "batch width"]]:
        """``(y_hat, f)``: the prediction and the feature activations."""
        f = self.encode(x)
        return self.decode(f), f

    def config(self) -> dict[str, Any]:
        """What it takes to rebuild the module (without its weights)."""
        return {
            "kind": self.kind,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "width": self.width,
            "tied": self.tied_bias,
        }

    @torch.no_grad()
    def fold_scales(self, input_scale: float, output_scale: float) -> None:
        """Make a dictionary trained on ``input_scale * x`` and ``output_scale * y`` map
        ``x`` to ``y``: ``W_enc *= input_scale``, ``b_in /= input_scale``, ``W_dec`` and
        ``b_out /= output_scale``. The features' activations are unchanged; decoder rows
        then have norm ``1 / output_scale``. An SAE has one scale (``x`` is ``y``)."""
        if self.tied_bias and input_scale != output_scale:
            raise ValueError("an SAE reads and writes one space: one scale")
        self.W_enc.mul_(input_scale)
        if not self.tied_bias:
            self.b_in.div_(input_scale)
        self.W_dec.div_(output_scale)
        self.b_out.div_(output_scale)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Scale every decoder row to unit norm."""
        self.W_dec.copy_(_unit_rows(self.W_dec))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from ``W_dec.grad`` each row's component along that row.

        With unit-norm rows, the L1 penalty could otherwise be evaded by shrinking a
        feature's activation and growing its decoder row; the projected gradient only
        turns a row (to first order), and :meth:`normalise_decoder` removes the rest.
        """
        grad = self.W_dec.grad
        if grad is None:
            return
        rows = _unit_rows(self.W_dec)
        grad -= (grad * rows).sum(-1, keepdim=True) * rows


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def unit_scale(x: Float[torch.Tensor, "n d"]) -> float:
    """The factor that gives ``x`` a mean norm of ``sqrt(d)`` (about 1 per component).

    Adam's steps are of a fixed size in parameter units, so the same learning rate
    means different things on data of different scales (SmolLM2's MLP outputs have a
    mean norm of about 66, Gemma 3's about 2); dictionaries are trained on data brought
    to this scale and the factor folded back afterwards (:meth:`SparseDictionary.
    fold_scales`). The normalised MSE and the L1 penalty are both linear in the scale, so
    this leaves the objective's balance unchanged."""
    return float(x.shape[-1] ** 0.5 / x.double().norm(dim=-1).mean().clamp_min(_EPS))


def normalised_mse(
    y_hat: Float[torch.Tensor, "batch d_out"], y: Float[torch.Tensor, "batch d_out"]
) -> Float[torch.Tensor, " batch"]:
    """Each token's ``||y_hat - y||^2 / (d_out ||y||)``: the reconstruction term of the
    training objective (Dunefsky et al. 2024; the ``1 / d_out`` as in the authors' code,
    which averages over output components). Dividing by ``||y||`` keeps tokens with a
    large output from dominating the loss."""
    squared = (y_hat - y).pow(2).sum(-1)
    return squared / (y.shape[-1] * y.norm(dim=-1).clamp_min(_EPS))


# ---------------------------------------------------------------------------------------
# Dead-feature resampling


@torch.no_grad()
def resample_dead_features(
    dictionary: SparseDictionary,
    dead: Bool[torch.Tensor, " width"],
    x: Float[torch.Tensor, "n d_in"],
    y: Float[torch.Tensor, "n d_out"],
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
) -> int:
    """Re-initialise the ``dead`` features from badly reconstructed tokens.

    The recipe of Bricken et al. (2023), "Towards Monosemanticity", appendix "Neuron
    resampling", adapted to a transcoder (whose input and output spaces differ):

    1. each token of ``(x, y)`` gets a probability proportional to the square of its
       squared reconstruction error ``||y - y_hat||^2`` (tokens the dictionary already
       explains are rarely picked); one token is drawn per dead feature, with
       replacement;
    2. the feature's decoder row becomes the token's normalised residual
       ``(y - y_hat) / ||y - y_hat||``: the part of the target the dictionary misses;
    3. its encoder column becomes the token's normalised ``x - b_in``, scaled to
       :data:`RESAMPLE_ENCODER_SCALE` times the mean norm of the alive features' encoder
       columns (1 when none is alive), and its ``b_enc`` becomes 0: the new feature fires
       on inputs like the drawn one, weakly at first;
    4. Adam's moments (``exp_avg``, ``exp_avg_sq``) of exactly those rows and columns are
       zeroed, so that the new feature's first steps are not driven by the dead one's
       history. (Adam's step count is shared by the whole tensor and is left alone.)

    Returns:
        The number of features resampled: 0 when none is dead or when the dictionary
        reconstructs every token exactly.
    """
    device = dictionary.W_dec.device
    dead, x, y = dead.to(device), x.to(device), y.to(device)
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    errors = []
    for start in range(0, x.shape[0], batch_size):
        y_hat, _ = dictionary(x[start : start + batch_size])
        errors.append((y[start : start + batch_size] - y_hat).pow(2).sum(-1))
    error = torch.cat(errors).double()
    top = error.max()
    if not top > 0:
        return 0
    # Scaling by the largest error first keeps the squares far from under- and overflow.
    weights = (error / top).pow(2)
    drawn = torch.multinomial(weights.cpu(), n_dead, replacement=True, generator=generator)
    drawn = drawn.to(device)
    y_hat, _ = dictionary(x[drawn])
    residual = _unit_rows(y[drawn] - y_hat)
    direction = _unit_rows(x[drawn] - dictionary.b_in)
    alive = ~dead
    norms = dictionary.W_enc.norm(dim=0)
    scale = norms[alive].mean() if bool(alive.any()) else norms.new_tensor(1.0)
    dictionary.W_dec[dead] = residual
    dictionary.W_enc[:, dead] = (RESAMPLE_ENCODER_SCALE * scale * direction).T
    dictionary.b_enc[dead] = 0.0
    if optimizer is not None:
        for parameter, index in (
            (dictionary.W_enc, (slice(None), dead)),
            (dictionary.b_enc, (dead,)),
            (dictionary.W_dec, (dead,)),
        ):
            state = optimizer.state.get(parameter, {})
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in state:
                    state[key][index] = 0.0
    return n_dead


# ---------------------------------------------------------------------------------------
# Training


def train_dictionary(
    dictionary: SparseDictionary,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float = 4e-4,
    l1: float = 1.4e-4,
    *,
    warmup_steps: int = 0,
    l1_warmup_steps: int = 0,
    resample_at: Sequence[int] = (),
    dead_window: int | None = None,
    resample_pool: int = 8,
    betas: tuple[float, float] = (0.9, 0.999),
    optimizer: torch.optim.Adam | None = None,
    seed: int = 0,
    progress: bool = False,
    log_every: int = 100,
) -> pd.DataFrame:
    """Train ``dictionary`` in place on ``steps`` batches (Dunefsky et al. 2024).

    Each step: the loss ``mean_t normalised_mse + l1_s * mean_t sum_i |f_ti|`` on one
    batch, its gradient with the component along each decoder row removed
    (:meth:`SparseDictionary.project_decoder_grad`), an Adam step at ``lr_s``, and the
    decoder rows set back to unit norm. ``lr_s`` and ``l1_s`` rise linearly from
    ``lr / warmup_steps`` and ``l1 / l1_warmup_steps`` to ``lr`` and ``l1`` over the
    warm-ups (the L1 warm-up lets features form before sparsity is enforced; 0: none).

    A feature is *dead* at step ``s`` when it has fired on no token of the last
    ``dead_window`` steps, or, with ``dead_window=None``, on no token since the previous
    resampling (or the start). After each step in ``resample_at`` the dead features are
    resampled (:func:`resample_dead_features`) from the ``resample_pool`` most recent
    batches.

    Args:
        dictionary: The module to train (from :meth:`SparseDictionary.from_sample`).
        batches: Yields at least ``steps`` pairs ``(x [batch, d_in], y [batch, d_out])``
            (for an SAE, ``y`` is ``x``); they are moved to the dictionary's device.
        steps: Optimizer steps.
        lr: Peak Adam learning rate (the authors': 4e-4).
        l1: Final L1 coefficient (the authors': 1.4e-4 on GPT-2).
        warmup_steps: Steps of linear learning-rate warm-up.
        l1_warmup_steps: Steps of linear L1 warm-up.
        resample_at: Steps (1-based) after which dead features are resampled.
        dead_window: See above.
        resample_pool: Recent batches kept to draw resampled features from.
        betas: Adam's betas.
        optimizer: An Adam over ``dictionary.parameters()`` to continue with (its state
            is kept and updated); a fresh one when None.
        seed: Seed of the resampling draws. With the same batches, the same seed gives
            the same history and weights.
        progress: Show a tqdm bar with the loss and L0.
        log_every: A history row every ``log_every`` steps (and at the last step and at
            every resampling).

    Returns:
        The history, one row per logged step: ``step``, ``loss``, ``mse`` (the
        normalised reconstruction term), ``l1_term`` (the penalty as added to the loss,
        ``l1_s`` included), ``l0`` (mean active features per token), ``dead`` (features
        dead at that step, before any resampling), ``resampled``, ``lr`` and
        ``l1_coefficient``.
    """
    if steps < 1:
        raise ValueError("training needs at least one step")
    bad = [s for s in resample_at if not 1 <= s <= steps]
    if bad:
        raise ValueError(f"resampling steps {bad} lie outside 1..{steps}")
    resample_steps = set(resample_at)
    device = dictionary.W_dec.device
    if optimizer is None:
        optimizer = torch.optim.Adam(dictionary.parameters(), lr=lr, betas=betas)
    generator = torch.Generator().manual_seed(seed)
    pool: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=max(resample_pool, 1))
    steps_since_fired = torch.zeros(dictionary.width, dtype=torch.long, device=device)
    last_resample = 0
    rows = []
    dictionary.train()
    dictionary.normalise_decoder()
    iterator = iter(batches)
    bar = tqdm(range(1, steps + 1), desc="dictionary", disable=not progress, unit="step")
    for step in bar:
        try:
            x, y = next(iterator)
        except StopIteration:
            raise ValueError(f"the batches ran out after {step - 1} of {steps} steps") from None
        x = x.to(device=device, dtype=torch.float32)
        y = y.to(device=device, dtype=torch.float32)
        lr_s = lr * min(1.0, step / warmup_steps) if warmup_steps else lr
        l1_s = l1 * min(1.0, step / l1_warmup_steps) if l1_warmup_steps else l1
        for group in optimizer.param_groups:
            group["lr"] = lr_s

        y_hat, f = dictionary(x)
        mse = normalised_mse(y_hat, y).mean()
        l1_term = l1_s * f.abs().sum(-1).mean()
        loss = mse + l1_term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dictionary.project_decoder_grad()
        optimizer.step()
        dictionary.normalise_decoder()

        with torch.no_grad():
            fired = (f > 0).any(0)
            steps_since_fired += 1
            steps_since_fired[fired] = 0
            window = dead_window if dead_window is not None else step - last_resample
            dead = steps_since_fired >= window
        pool.append((x, y))
        resampled = 0
        if step in resample_steps:
            pool_x = torch.cat([b[0] for b in pool])
            pool_y = torch.cat([b[1] for b in pool])
            resampled = resample_dead_features(
                dictionary, dead, pool_x, pool_y, optimizer, generator
            )
            steps_since_fired[dead] = 0
            last_resample = step

        if step % log_every == 0 or step == steps or resampled:
            row = {
                "step": step,
                "loss": loss.item(),
                "mse": mse.item(),
                "l1_term": l1_term.item(),
                "l0": (f > 0).sum(-1).double().mean().item(),
                "dead": int(dead.sum()),
                "resampled": resampled,
                "lr": lr_s,
                "l1_coefficient": l1_s,
            }
            rows.append(row)
            if progress:
                bar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}")
    dictionary.eval()
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_dictionary(
    dictionary: SparseDictionary,
    x: Float[torch.Tensor, "n d_in"],
    y: Float[torch.Tensor, "n d_out"] | None = None,
    batch_size: int = 4096,
) -> dict[str, float]:
    """How well and how sparsely ``dictionary`` maps ``x`` to ``y`` (``x`` for None).

    Returns:
        ``l0``: mean number of active features per token; ``fvu``: the fraction of
        variance unexplained, ``sum_t ||y_hat_t - y_t||^2 / sum_t ||y_t - mean(y)||^2``
        over the whole set (in float64; 0 is a perfect prediction, 1 is no better than
        the mean); ``normalised_mse``: the training objective's reconstruction term
        (:func:`normalised_mse`) averaged over tokens; ``l1``: mean ``sum_i |f_i|``;
        ``dead``: features that fire on no token of the set; ``dead_share``: their
        share of the width.
    """
    y = x if y is None else y
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y need the same, nonzero number of rows: {x.shape}, {y.shape}")
    device = dictionary.W_dec.device
    mean = y.double().mean(0).to(device)
    error = variance = normalised = l1 = 0.0
    active = 0
    fired = torch.zeros(dictionary.width, dtype=torch.bool, device=device)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device=device, dtype=torch.float32)
        yb = y[start : start + batch_size].to(device=device, dtype=torch.float32)
        y_hat, f = dictionary(xb)
        error += (y_hat.double() - yb.double()).pow(2).sum().item()
        variance += (yb.double() - mean).pow(2).sum().item()
        normalised += normalised_mse(y_hat, yb).double().sum().item()
        l1 += f.double().abs().sum().item()
        on = f > 0
        active += int(on.sum())
        fired |= on.any(0)
    n = x.shape[0]
    dead = int((~fired).sum())
    return {
        "l0": active / n,
        "fvu": error / variance if variance > 0 else math.nan,
        "normalised_mse": normalised / n,
        "l1": l1 / n,
        "dead": dead,
        "dead_share": dead / dictionary.width,
    }


# ---------------------------------------------------------------------------------------
# Saving and loading


def save_dictionary(
    dictionary: SparseDictionary,
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``dictionary`` into the folder ``path``: the weights as
    :data:`WEIGHTS_FILE` (safetensors) and :meth:`SparseDictionary.config` with its
    metadata (``dictionary.metadata`` updated by ``metadata``: l1, layer, seed, steps...)
    as :data:`CONFIG_FILE`.

    Each file is written to a temporary sibling and renamed into place, the config last,
    so an interrupted save never leaves a file that looks complete. Returns the folder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    merged = {**dictionary.metadata, **(metadata or {})}
    config = {**dictionary.config(), "metadata": merged}
    tensors = {name: t.detach().cpu().contiguous() for name, t in dictionary.state_dict().items()}
    _atomic_write(folder / WEIGHTS_FILE, lambda temporary: save_file(tensors, str(temporary)))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write(folder / CONFIG_FILE, lambda temporary: temporary.write_text(text, "utf-8"))
    return folder


def load_dictionary(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> SparseDictionary:
    """The dictionary :func:`save_dictionary` wrote into ``path``, with its metadata in
    ``.metadata``, in evaluation mode."""
    folder = Path(path)
    config = json.loads((folder / CONFIG_FILE).read_text("utf-8"))
    dictionary = SparseDictionary(
        config["d_in"], config["d_out"], config["width"], config["tied"], kind=config["kind"]
    )
    dictionary.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    dictionary.metadata = dict(config.get("metadata", {}))
    return dictionary.to(device).eval()


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    # The pid keeps concurrent writers apart; a plain file (not mkstemp) gets the usual
    # umask permissions.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
