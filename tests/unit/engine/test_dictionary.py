"""Sparse dictionaries (circuit_repro.engine.dictionary): a transcoder and an SAE
trained on planted sparse features find them; decoder rows stay at unit norm; dead
features are resampled; the evaluation metrics, saving and training are exact and
deterministic."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from circuit_repro.engine.dictionary import (
    CONFIG_FILE,
    RESAMPLE_ENCODER_SCALE,
    WEIGHTS_FILE,
    SparseDictionary,
    evaluate_dictionary,
    load_dictionary,
    resample_dead_features,
    save_dictionary,
    train_dictionary,
)

D_MODEL = 24
N_PLANTED = 48


class Planted:
    """``N_PLANTED`` random unit directions on each side (in ``D_MODEL`` dimensions, so
    twice overcomplete), codes on with probability 3% and of magnitude in [0.5, 1.5],
    ``x = offset_in + codes @ d_in``, ``y = offset_out + codes @ d_out`` plus a little
    noise. The offsets (unit vectors) stand for the mean of real activations and keep
    ``||y||``, which the loss divides by, away from zero."""

    def __init__(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.d_in = _unit(torch.randn(N_PLANTED, D_MODEL, generator=generator))
        self.d_out = _unit(torch.randn(N_PLANTED, D_MODEL, generator=generator))
        self.offset_in = _unit(torch.randn(D_MODEL, generator=generator))
        self.offset_out = _unit(torch.randn(D_MODEL, generator=generator))

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        on = torch.rand(n, N_PLANTED, generator=generator) < 0.03
        codes = on * (0.5 + torch.rand(n, N_PLANTED, generator=generator))
        x = self.offset_in + codes @ self.d_in + 1e-3 * torch.randn(n, D_MODEL, generator=generator)
        y = self.offset_out + codes @ self.d_out
        return x, y + 1e-3 * torch.randn(n, D_MODEL, generator=generator)

    def batches(self, size: int, seed: int, sae: bool = False):
        generator = torch.Generator().manual_seed(seed)
        while True:
            x, y = self.sample(size, generator)
            yield (x, x) if sae else (x, y)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True)


@pytest.fixture(autouse=True)
def _one_thread():
    # The matrices here are tiny: extra threads only add synchronisation, which costs
    # a lot when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_planted(kind: str, steps: int = 2000, seed: int = 0):
    planted = Planted(seed=seed)
    x, y = planted.sample(4096, torch.Generator().manual_seed(seed + 1))
    if kind == "sae":
        y = x
    dictionary = SparseDictionary.from_sample(kind, x, y, width=96, seed=seed)
    history = train_dictionary(
        dictionary,
        planted.batches(256, seed=seed + 2, sae=kind == "sae"),
        steps,
        lr=3e-3,
        l1=1e-2,
        warmup_steps=100,
        l1_warmup_steps=steps // 5,
        resample_at=[steps // 5, 2 * steps // 5, 3 * steps // 5],
        log_every=100,
    )
    return planted, dictionary, history, evaluate_dictionary(dictionary, x, y)


def _best_match(directions: torch.Tensor, rows: torch.Tensor):
    """For each planted direction, the best cosine over the learned rows and its row."""
    return (directions @ _unit(rows).T).max(-1)


def test_sae_recovers_planted_directions():
    planted, sae, history, metrics = _train_planted("sae")
    cosine, _ = _best_match(planted.d_in, sae.W_dec.detach())
    assert (cosine > 0.9).float().mean() >= 0.8, cosine
    # The features are about as sparse as the planted codes (1.44 on per token).
    assert metrics["l0"] < 4 and metrics["fvu"] < 0.25, metrics
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.width), atol=1e-5)
    assert history["resampled"].sum() > 0  # 96 features for 48 directions: some die


def test_transcoder_recovers_planted_directions_on_both_sides():
    planted, transcoder, _, metrics = _train_planted("transcoder")
    cosine, match = _best_match(planted.d_out, transcoder.W_dec.detach())
    assert (cosine > 0.9).float().mean() >= 0.8, cosine
    assert metrics["l0"] < 4 and metrics["fvu"] < 0.3, metrics
    # The encoder reads the input side. Its columns are not the planted input
    # directions themselves: with 48 directions in 24 dimensions, a detector of one code
    # also has to cancel the interference of the other 47 (even the least-squares linear
    # probe of a code has a median cosine of only about 0.7 with its direction here; two
    # random directions in 24 dimensions have one of about 0.2). So: each matched
    # feature's encoder column is closer to its own planted input direction than to any
    # other, and well aligned with it (about 0.65 here).
    encoder = _unit(transcoder.W_enc.detach().T[match])  # [planted, d_in]
    cosines = encoder @ planted.d_in.T  # [planted, planted]
    own = cosines.diagonal()
    assert (cosines.argmax(-1) == torch.arange(N_PLANTED)).float().mean() >= 0.8
    assert (own > 0.5).float().mean() >= 0.8, own
    # And functionally, b_in included: adding one planted input direction to the input
    # with no feature on lights up mostly the feature that writes its output direction.
    with torch.no_grad():
        base = transcoder.encode(planted.offset_in[None])
        response = transcoder.encode(planted.offset_in + planted.d_in) - base
    assert (response.argmax(-1) == match).float().mean() >= 0.8


def test_tied_bias_is_one_parameter():
    sae = SparseDictionary(5, 5, 7, tied_bias=True)
    assert sae.kind == "sae" and sae.b_in is sae.b_out
    assert len(list(sae.parameters())) == 4 and "b_in" not in sae.state_dict()
    transcoder = SparseDictionary(5, 6, 7, tied_bias=False)
    assert transcoder.kind == "transcoder" and transcoder.b_in.shape == (5,)
    assert len(list(transcoder.parameters())) == 5
    with pytest.raises(ValueError, match="d_in == d_out"):
        SparseDictionary(5, 6, 7, tied_bias=True)


def test_from_sample_initialisation():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 6, generator=generator), torch.randn(100, 5, generator=generator)
    sae = SparseDictionary.from_sample("sae", x, None, 12, seed=3)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(12))
    assert torch.equal(sae.W_enc, sae.W_dec.T) and torch.allclose(sae.b_in, x.mean(0))
    assert torch.equal(sae.b_enc, torch.zeros(12))
    transcoder = SparseDictionary.from_sample("transcoder", x, y, 12, seed=3)
    assert torch.allclose(transcoder.b_in, x.mean(0)) and torch.allclose(
        transcoder.b_out, y.mean(0)
    )
    assert torch.allclose(transcoder.W_enc.norm(dim=0), torch.ones(12))
    again = SparseDictionary.from_sample("transcoder", x, y, 12, seed=3)
    assert all(
        torch.equal(a, b) for a, b in zip(transcoder.parameters(), again.parameters(), strict=True)
    )


def test_decoder_gradient_projection_leaves_row_norms_to_second_order():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator)
    dictionary = SparseDictionary.from_sample("sae", x, None, 16, seed=0)
    y_hat, f = dictionary(x)
    ((y_hat - x).pow(2).sum(-1).mean() + 0.1 * f.abs().sum(-1).mean()).backward()
    raw = dictionary.W_dec.grad.clone()
    dictionary.project_decoder_grad()
    grad, rows = dictionary.W_dec.grad, dictionary.W_dec.detach()
    # Nothing is left along each row; the rest of the gradient is untouched.
    assert (grad * rows).sum(-1).abs().max() < 1e-6
    assert torch.allclose(grad, raw - (raw * rows).sum(-1, keepdim=True) * rows, atol=1e-6)
    # So a small step only turns a row: its norm moves by O(step^2), not O(step).
    step = 1e-3
    moved = (rows - step * grad).norm(dim=-1)
    assert (moved - 1).abs().max() <= step**2 * grad.norm(dim=-1).max() ** 2 + 1e-6
    assert ((rows - step * raw).norm(dim=-1) - 1).abs().max() > 10 * (moved - 1).abs().max()


def test_decoder_rows_are_unit_norm_after_training():
    planted = Planted(seed=1)
    x, y = planted.sample(512, torch.Generator().manual_seed(0))
    transcoder = SparseDictionary.from_sample("transcoder", x, y, 32, seed=0)
    with torch.no_grad():
        transcoder.W_dec.mul_(torch.linspace(0.1, 5.0, 32)[:, None])
    train_dictionary(transcoder, planted.batches(64, seed=1), 5, lr=1e-2, l1=1e-2)
    assert torch.allclose(transcoder.W_dec.norm(dim=-1), torch.ones(32), atol=1e-5)


def test_resampling_revives_dead_features_and_resets_their_adam_state():
    planted = Planted(seed=2)
    x, _ = planted.sample(1024, torch.Generator().manual_seed(0))
    sae = SparseDictionary.from_sample("sae", x, None, 32, seed=0)
    dead = torch.arange(32) < 10
    with torch.no_grad():
        sae.b_enc[dead] = -100.0  # never fire
    optimizer = torch.optim.Adam(sae.parameters())
    history = train_dictionary(
        sae, planted.batches(128, seed=3, sae=True), 30, lr=1e-3, l1=1e-3,
        resample_at=[30], optimizer=optimizer, log_every=10,
    )  # fmt: skip
    assert history["dead"].tolist() == [10, 10, 10] and history["resampled"].tolist() == [0, 0, 10]
    assert evaluate_dictionary(sae, x)["dead"] == 0
    assert (sae.encode(x)[:, dead] > 0).any(0).all()
    assert torch.equal(sae.b_enc[dead], torch.zeros(10))
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    assert torch.allclose(
        sae.W_enc[:, dead].norm(dim=0), RESAMPLE_ENCODER_SCALE * alive_norm.expand(10)
    )
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32))
    for parameter, part, rest in (
        (sae.W_enc, lambda t: t[:, dead], lambda t: t[:, ~dead]),
        (sae.b_enc, lambda t: t[dead], lambda t: t[~dead]),
        (sae.W_dec, lambda t: t[dead], lambda t: t[~dead]),
    ):
        for key in ("exp_avg", "exp_avg_sq"):
            moment = optimizer.state[parameter][key]
            assert torch.equal(part(moment), torch.zeros_like(part(moment))), key
            assert rest(moment).abs().sum() > 0, key


def test_resampling_draws_from_badly_reconstructed_tokens():
    # An SAE with W_enc = W_dec = I reconstructs every nonnegative x exactly; the one
    # token with a negative entry is the only one with an error, so every dead feature
    # is drawn from it.
    sae = SparseDictionary(4, 4, 4, tied_bias=True)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    x = torch.rand(50, 4, generator=torch.Generator().manual_seed(0))
    x[17] = torch.tensor([0.5, -2.0, 0.0, 1.0])
    dead = torch.tensor([False, False, True, True])
    n = resample_dead_features(sae, dead, x, x, generator=torch.Generator().manual_seed(0))
    assert n == 2
    expected_decoder = torch.tensor([0.0, -1.0, 0.0, 0.0])  # the residual x - x_hat, normalised
    assert torch.allclose(sae.W_dec[2:], expected_decoder.expand(2, 4))
    expected_encoder = RESAMPLE_ENCODER_SCALE * _unit(x[17])  # alive columns have norm 1
    assert torch.allclose(sae.W_enc[:, 2:].T, expected_encoder.expand(2, 4))
    assert torch.equal(sae.W_enc[:, :2], torch.eye(4)[:, :2])
    # Nothing to resample when the reconstruction is perfect.
    exact = _identity_sae(4)
    assert resample_dead_features(exact, dead.repeat(2), x, x) == 0
    assert torch.equal(exact.W_dec, _identity_sae(4).W_dec)


def _identity_sae(d: int) -> SparseDictionary:
    """An SAE that reconstructs every x exactly: features relu(x_k) and relu(-x_k)."""
    sae = SparseDictionary(d, d, 2 * d, tied_bias=True)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
    return sae


def test_evaluation_of_a_perfect_and_of_a_mean_dictionary():
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    perfect = evaluate_dictionary(_identity_sae(6), x, batch_size=64)
    assert perfect["fvu"] < 1e-12 and perfect["normalised_mse"] < 1e-12
    assert perfect["dead"] == 0 and perfect["dead_share"] == 0.0

    y = 3.0 + torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    mean = SparseDictionary(6, 5, 10, tied_bias=False)
    with torch.no_grad():
        mean.b_enc.fill_(-1.0)  # no feature ever fires
        mean.b_out.copy_(y.double().mean(0).float())
    metrics = evaluate_dictionary(mean, x, y, batch_size=64)
    assert metrics["fvu"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["l0"] == 0 and metrics["dead"] == 10 and metrics["dead_share"] == 1.0
    expected = ((y - y.mean(0)).pow(2).sum(-1) / (5 * y.norm(dim=-1))).mean()
    assert metrics["normalised_mse"] == pytest.approx(expected.item(), rel=1e-5)


def test_l0_and_dead_features_on_a_hand_made_example():
    x = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]],
    )
    metrics = evaluate_dictionary(_identity_sae(4), x, batch_size=2)
    # Active: feature 0 on token 0; features 0, 3 and 4 + 1 = 5 on token 1; none on 2.
    assert metrics["l0"] == pytest.approx(4 / 3)
    assert metrics["l1"] == pytest.approx(7 / 3)
    assert metrics["dead"] == 5 and metrics["dead_share"] == 5 / 8
    assert metrics["fvu"] < 1e-12


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
def test_save_and_load_round_trip(tmp_path, kind):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=generator), torch.randn(40, 6, generator=generator)
    dictionary = SparseDictionary.from_sample(kind, x, y, 16, seed=1)
    with torch.no_grad():
        for parameter in dictionary.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    dictionary.metadata = {"layer": 3}
    folder = save_dictionary(dictionary, tmp_path / "dict", {"l1": 1.4e-4, "seed": 7})
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    loaded = load_dictionary(folder)
    assert loaded.config() == dictionary.config() and loaded.kind == kind
    assert loaded.metadata == {"layer": 3, "l1": 1.4e-4, "seed": 7}
    assert loaded.tied_bias == (kind == "sae") and (loaded.b_in is loaded.b_out) == (kind == "sae")
    with torch.no_grad():
        for got, want in zip(loaded(x), dictionary(x), strict=True):
            assert torch.equal(got, want)


def test_training_is_deterministic_and_warms_up():
    planted = Planted(seed=3)
    x, y = planted.sample(512, torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        transcoder = SparseDictionary.from_sample("transcoder", x, y, 64, seed=5)
        with torch.no_grad():
            transcoder.b_enc[:8] = -100.0  # dead, to be resampled
        history = train_dictionary(
            transcoder, planted.batches(64, seed=6), 40, lr=1e-2, l1=1e-2,
            warmup_steps=10, l1_warmup_steps=20, resample_at=[20, 30], seed=4, log_every=1,
        )  # fmt: skip
        runs.append((history, transcoder.state_dict()))
    (first, weights), (second, weights_again) = runs
    pd.testing.assert_frame_equal(first, second)
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert first["resampled"].sum() > 0  # the resampling draws are covered
    assert first["step"].tolist() == list(range(1, 41))
    assert first["lr"][4] == pytest.approx(5e-3) and first["lr"][20] == pytest.approx(1e-2)
    assert first["l1_coefficient"][4] == pytest.approx(2.5e-3)
    assert first["l1_coefficient"][25] == pytest.approx(1e-2)
    assert ((first["mse"] + first["l1_term"]) - first["loss"]).abs().max() < 1e-6


def test_training_needs_enough_batches():
    planted = Planted()
    x, y = planted.sample(64, torch.Generator().manual_seed(0))
    transcoder = SparseDictionary.from_sample("transcoder", x, y, 8)
    with pytest.raises(ValueError, match="ran out after 2 of 5"):
        train_dictionary(transcoder, [(x, y), (x, y)], 5)


def test_folding_the_training_scales_maps_raw_inputs_to_raw_outputs():
    """A dictionary trained on scaled data, with its scales folded in, gives on raw x
    the raw-scale prediction and the same feature activations."""
    from circuit_repro.engine.dictionary import unit_scale

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator) * 30 + 5
    y = torch.randn(64, 8, generator=generator) * 0.02
    cx, cy = unit_scale(x), unit_scale(y)
    assert (x * cx).norm(dim=1).mean() == pytest.approx(8**0.5, rel=1e-4)
    for kind, scales in (("transcoder", (cx, cy)), ("sae", (cy, cy))):
        source = x if kind == "transcoder" else y
        scaled = SparseDictionary.from_sample(kind, source * scales[0], y * cy, 16, seed=1)
        with torch.no_grad():
            scaled.b_enc.normal_(0, 0.5, generator=generator)
        y_hat, f = scaled(source * scales[0])
        scaled.fold_scales(*scales)
        raw_y_hat, raw_f = scaled(source)
        torch.testing.assert_close(raw_f, f, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(raw_y_hat, y_hat / cy, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="one scale"):
        scaled.fold_scales(cx, cy)
