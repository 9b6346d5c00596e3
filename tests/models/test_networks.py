"""The model zoo: output contract, masking, causality, Jordan feedback, and that each learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.layers import masked_softmax
from models.networks import ARCHITECTURES, ModelConfig, build_model, variants

torch.set_num_threads(1)
B, T, F, S = 4, 12, 5, 3
VARIANTS = [pytest.param(a, bi, id=f"{a}{'-bi' if bi else ''}") for a, bi in variants()]
UNIDIRECTIONAL = [pytest.param(a, False, id=a) for a in ARCHITECTURES]


def config(arch: str, bidirectional: bool = False, **kw) -> ModelConfig:
    forecast = {"horizon": 3, "n_targets": 2, "target_index": (1, 3)} if arch == "seq2seq" else {}
    base = {"hidden": 16, "attn_dim": 8, "dropout": 0.0, **forecast, **kw}
    return ModelConfig(arch, 3 * F, 2 * S, bidirectional=bidirectional, **base)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 3 * F, generator=g)
    static = torch.randn(B, 2 * S, generator=g)
    step_mask = torch.ones(B, T, dtype=torch.bool)
    step_mask[1, :3] = False  # leading empty bins
    step_mask[2, 9:] = False  # trailing padding
    step_mask[3, :2] = False
    step_mask[3, 7:] = False
    return x, static, step_mask


def model_for(arch: str, bidirectional: bool, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config(arch, bidirectional, **kw)).eval()


def test_every_architecture_has_a_constructor() -> None:
    for arch, bi in variants():
        assert isinstance(build_model(config(arch, bi)), torch.nn.Module)


def test_config_round_trips_through_a_dict() -> None:
    cfg = config("seq2seq")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("kw", "problem"), [
    ({"arch": "transformer"}, "unknown architecture"),
    ({"arch": "jordan", "bidirectional": True}, "no bidirectional"),
    ({"arch": "seq2seq"}, "horizon"),
    ({"arch": "gru", "n_inputs": 10}, "multiple of 3"),
])
def test_invalid_config_is_refused(kw: dict, problem: str) -> None:
    args = {"arch": "gru", "n_inputs": 15, "n_static": 6, **kw}
    with pytest.raises(ValueError, match=problem):
        ModelConfig(**args)


def test_unknown_config_key_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config("gru").to_dict(), "heads": 3})


@pytest.mark.parametrize(("arch", "bi"), VARIANTS)
def test_output_shapes(arch: str, bi: bool) -> None:
    out = model_for(arch, bi)(*batch())
    assert out.risk_logit.shape == (B,)
    assert out.los.shape == (B,)
    assert (out.los >= 0).all()
    assert out.attention.shape == (B, T)
    if arch == "seq2seq":
        assert out.forecast is not None and out.decoder_attention is not None
        assert out.forecast.shape == (B, 3, 2)
        assert out.decoder_attention.shape == (B, 3, T)
    else:
        assert out.forecast is None and out.decoder_attention is None


@pytest.mark.parametrize(("arch", "bi"), VARIANTS)
def test_attention_sums_to_one_over_observed_steps_and_is_zero_on_padding(
        arch: str, bi: bool) -> None:
    x, static, step_mask = batch()
    out = model_for(arch, bi)(x, static, step_mask)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(B))
    assert (out.attention[~step_mask] == 0).all()
    assert (out.attention[step_mask] > 0).all()
    if out.decoder_attention is not None:
        torch.testing.assert_close(out.decoder_attention.sum(2), torch.ones(B, 3))
        assert (out.decoder_attention.transpose(1, 2)[~step_mask] == 0).all()


@pytest.mark.parametrize(("arch", "bi"), VARIANTS)
def test_padding_content_does_not_change_the_output(arch: str, bi: bool) -> None:
    x, static, step_mask = batch()
    noisy = torch.where(step_mask[..., None], x, torch.randn_like(x) * 10)
    model = model_for(arch, bi)
    a, b = model(x, static, step_mask), model(noisy, static, step_mask)
    torch.testing.assert_close(a.risk_logit, b.risk_logit)
    torch.testing.assert_close(a.attention, b.attention)


@pytest.mark.parametrize(("arch", "bi"), VARIANTS)
def test_leading_empty_bins_do_not_change_the_output(arch: str, bi: bool) -> None:
    """A stay is encoded from its first observed bin, wherever that bin lies."""
    x, static, step_mask = batch()
    shifted = torch.roll(x, 2, dims=1)
    shifted_mask = torch.roll(step_mask, 2, dims=1)
    keep = ~step_mask[:, -2:].any(1)  # rows whose span survives the roll intact
    model = model_for(arch, bi)
    a, b = model(x, static, step_mask), model(shifted, static, shifted_mask)
    torch.testing.assert_close(a.risk_logit[keep], b.risk_logit[keep])
    torch.testing.assert_close(torch.roll(a.attention, 2, 1)[keep], b.attention[keep])


def test_empty_stay_gives_zero_attention_and_finite_outputs() -> None:
    x, static, _ = batch()
    out = model_for("gru", False)(x, static, torch.zeros(B, T, dtype=torch.bool))
    assert (out.attention == 0).all()
    assert torch.isfinite(out.risk_logit).all() and torch.isfinite(out.los).all()


def test_masked_softmax_guards_rows_without_valid_entries() -> None:
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    w = masked_softmax(torch.randn(2, 4), mask)
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 0.0]))
    assert w[0, 1] == 0 and w[0, 3] == 0


@pytest.mark.parametrize(("arch", "bi"), UNIDIRECTIONAL)
@pytest.mark.parametrize("k", [3, 7])
def test_unidirectional_models_are_causal(arch: str, bi: bool, k: int) -> None:
    """Perturbing step k leaves the states and attention energies at steps < k unchanged."""
    x, static, step_mask = batch()
    step_mask[:] = True
    later = x.clone()
    later[:, k:] += torch.randn_like(later[:, k:]) * 3
    model = model_for(arch, bi)
    with torch.no_grad():
        s0, s1 = model.encode(x, static, step_mask), model.encode(later, static, step_mask)
        e0, e1 = model.heads.scores(s0, static), model.heads.scores(s1, static)
    torch.testing.assert_close(s0[:, :k], s1[:, :k], rtol=0, atol=1e-6)
    torch.testing.assert_close(e0[:, :k], e1[:, :k], rtol=0, atol=1e-6)
    assert not torch.allclose(s0[:, k:], s1[:, k:])  # the perturbation does reach step k


@pytest.mark.parametrize("arch", ["elman", "lstm", "gru"])
def test_bidirectional_models_see_the_future(arch: str) -> None:
    x, static, step_mask = batch()
    step_mask[:] = True
    later = x.clone()
    later[:, 8:] += 3.0
    model = model_for(arch, True)
    with torch.no_grad():
        s0, s1 = model.encode(x, static, step_mask), model.encode(later, static, step_mask)
    assert not torch.allclose(s0[:, :8], s1[:, :8])


def test_jordan_feedback_changes_the_outputs() -> None:
    x, static, step_mask = batch()
    model = model_for("jordan", False)
    with torch.no_grad():
        before = model(x, static, step_mask)
        for cell in model.encoder.cells:
            cell.feedback.weight.zero_()
        after = model(x, static, step_mask)
    assert (before.risk_logit - after.risk_logit).abs().max() > 1e-3
    assert (before.attention - after.attention).abs().max() > 1e-4


def test_jordan_with_two_layers_runs_and_stays_causal() -> None:
    x, static, step_mask = batch()
    step_mask[:] = True
    model = model_for("jordan", False, layers=2)
    later = x.clone()
    later[:, 6:] += 1.0
    with torch.no_grad():
        s0, s1 = model.encode(x, static, step_mask), model.encode(later, static, step_mask)
    torch.testing.assert_close(s0[:, :6], s1[:, :6], rtol=0, atol=1e-6)


def test_untrained_seq2seq_forecast_is_the_carry_forward() -> None:
    x, static, step_mask = batch()
    out = model_for("seq2seq", False)(x, static, step_mask)
    last = torch.tensor([T - 1, T - 1, 8, 6])
    expected = x[torch.arange(B), last][:, [1, 3]]
    torch.testing.assert_close(out.forecast, expected[:, None, :].expand(B, 3, 2))


# --- each family learns ---------------------------------------------------------------------

N, T_COHORT, F_COHORT, HORIZON = 640, 16, 3, 4


def cohort(seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny seeded cohort: a latent deterioration from a random onset pushes variable 0 up and
    variable 1 down; death follows it (10% label noise). Irregular sampling, carry-forward,
    hours-since channel and leading empty bins as in `Tensors.inputs()`."""
    rng = np.random.default_rng(seed)
    sick = rng.random(N) < 0.4
    onset = rng.integers(2, T_COHORT - 4, N)
    t = np.arange(T_COHORT + HORIZON)
    ramp = np.clip(t[None] - onset[:, None], 0, None) * sick[:, None]  # (N, T + H)
    truth = np.stack([0.25 * ramp, -0.2 * ramp, np.zeros_like(ramp, dtype=float)], axis=2)
    truth = truth + 0.3 * rng.normal(size=truth.shape)
    hist = truth[:, :T_COHORT]
    mask = rng.random(hist.shape) < 0.5
    mask[:, :2] &= rng.random((N, 2, 1)) < 0.5  # some stays start later
    mask[:, -1, :2] = True
    idx = np.where(mask, np.arange(T_COHORT)[None, :, None], -1)
    idx = np.maximum.accumulate(idx, axis=1)
    values = np.where(idx >= 0, np.take_along_axis(hist, np.clip(idx, 0, None), 1), 0.0)
    delta = np.where(idx >= 0, np.arange(T_COHORT)[None, :, None] - idx, np.arange(
        1, T_COHORT + 1)[None, :, None])
    x = np.concatenate([values, mask, np.log1p(delta) / np.log1p(48)], axis=2)
    any_obs = mask.any(2)
    step_mask = np.cumsum(any_obs, 1) > 0
    died = sick ^ (rng.random(N) < 0.1)
    static = np.concatenate([rng.normal(size=(N, 1)), np.zeros((N, 1))], axis=1)
    return {"x": x.astype(np.float32), "static": static.astype(np.float32),
            "step_mask": step_mask, "died": died.astype(np.float32),
            "future": truth[:, T_COHORT:, :2].astype(np.float32)}


def fit(arch: str, bi: bool, data: dict[str, np.ndarray], epochs: int = 12) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"horizon": HORIZON, "n_targets": 2} if arch == "seq2seq" else {}
    model = build_model(ModelConfig(arch, 3 * F_COHORT, 2, hidden=16, attn_dim=8,
                                    dropout=0.0, bidirectional=bi, **extra))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, st, sm = (torch.from_numpy(data[k][:480]) for k in ("x", "static", "step_mask"))
    y, fut = torch.from_numpy(data["died"][:480]), torch.from_numpy(data["future"][:480])
    for _ in range(epochs):
        for i in range(0, 480, 64):
            out = model(x[i:i + 64], st[i:i + 64], sm[i:i + 64])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.risk_logit,
                                                                        y[i:i + 64])
            if out.forecast is not None:
                loss = loss + (out.forecast - fut[i:i + 64]).abs().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return cohort()


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "bi"), VARIANTS)
def test_each_family_beats_chance_on_risk(arch: str, bi: bool, data) -> None:
    model = fit(arch, bi, data)
    with torch.no_grad():
        out = model(*(torch.from_numpy(data[k][480:]) for k in ("x", "static", "step_mask")))
    auroc = roc_auc_score(data["died"][480:], out.risk_logit.numpy())
    assert auroc > 0.7, f"{arch} bidirectional={bi}: AUROC {auroc:.3f}"


@pytest.mark.slow
def test_seq2seq_beats_carry_forward(data) -> None:
    model = fit("seq2seq", False, data)
    with torch.no_grad():
        out = model(*(torch.from_numpy(data[k][480:]) for k in ("x", "static", "step_mask")))
    future = data["future"][480:]
    carry = data["x"][480:, -1, None, :2]  # last bin is observed for the targets
    mae_model = np.abs(out.forecast.numpy() - future).mean()
    mae_carry = np.abs(carry - future).mean()
    assert mae_model < 0.9 * mae_carry, f"seq2seq MAE {mae_model:.3f} vs carry {mae_carry:.3f}"
