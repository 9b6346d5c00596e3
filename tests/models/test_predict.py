"""The shared scoring path: calibration, order, masks, explanations, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.attribution import unobserved_baseline
from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.features import Grid, Normalizer, tensorise
from models.networks import ModelConfig, build_model
from models.predict import score, score_tensors

torch.set_num_threads(1)
FEATURES = ("heart_rate", "sbp", "lactate")
GRID = Grid(1.0, 24)


def observations() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for pid, start, end in (("p1", 0.5, 20.0), ("p2", 3.2, 9.0), ("p3", 1.0, 40.0)):
        for t in np.arange(start, end, 1.5):
            rows.append((pid, float(t), "heart_rate", float(rng.normal(90, 15))))
            rows.append((pid, float(t), "sbp", float(rng.normal(115, 20))))
        rows.append((pid, start + 2.0, "lactate", float(rng.uniform(0.8, 5.0))))
    return pd.DataFrame(rows, columns=["patient_id", "time_hours", "variable", "value"])


PATIENTS = pd.DataFrame({"patient_id": ["p1", "p2", "p3"], "age": [70, 45, 80],
                         "sex": ["male", "female", None], "weight": [80.0, None, 65.0]})


def checkpoint(tmp_path: Path, arch: str = "gru", temperature: float = 2.0) -> Checkpoint:
    obs = observations()
    norm = Normalizer.fit(obs, PATIENTS, FEATURES)
    extra = {"horizon": 3, "n_targets": 2} if arch == "seq2seq" else {}
    cfg = ModelConfig(arch, 3 * len(FEATURES), norm.n_static_inputs, hidden=8, attn_dim=4,
                      **extra)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path, "m", build_model(cfg), cfg, norm, GRID,
                           temperature=temperature,
                           task="forecast" if arch == "seq2seq" else "risk")
    return load_checkpoint(path)


def test_score_is_calibrated_ordered_and_masked(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path)
    preds = score(ck, observations(), PATIENTS, patient_ids=["p3", "p1", "p2"])
    tensors = tensorise(observations(), ck.normalizer, GRID, patients=PATIENTS,
                        patient_ids=["p3", "p1", "p2"])
    with torch.no_grad():
        out = ck.model(torch.from_numpy(tensors.inputs()), torch.from_numpy(tensors.static),
                       torch.from_numpy(tensors.step_mask))
    assert len(preds) == 3
    for j, p in enumerate(preds):
        assert p.logit == pytest.approx(float(out.risk_logit[j]), abs=1e-6)
        assert p.probability == pytest.approx(1 / (1 + np.exp(-p.logit / 2.0)), abs=1e-9)
        assert p.los_days >= 0
        assert p.attention.shape == (24,)
        np.testing.assert_array_equal(p.step_mask, tensors.step_mask[j])
        assert p.attention.sum() == pytest.approx(1.0, abs=1e-5)
        assert (p.attention[~p.step_mask] == 0).all()
        assert p.contributions is None and p.forecast is None
    assert [p.offset for p in preds] == [15, 0, 0]  # p3 last seen at 38.5 h: window slides
    assert not preds[2].step_mask[0]  # p2's first bin is at hour 3


def test_score_is_deterministic_across_calls_and_batch_sizes(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path)
    a = score(ck, observations(), PATIENTS)
    b = score(ck, observations(), PATIENTS)
    c = score(ck, observations(), PATIENTS, batch_size=1)
    assert [p.probability for p in a] == [p.probability for p in b]
    np.testing.assert_allclose([p.logit for p in a], [p.logit for p in c], atol=1e-5)
    np.testing.assert_array_equal(a[0].attention, b[0].attention)


def test_explain_gives_complete_per_variable_contributions(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path)
    preds = score(ck, observations(), PATIENTS, explain=True)
    tensors = tensorise(observations(), ck.normalizer, GRID, patients=PATIENTS)
    x = torch.from_numpy(tensors.inputs())
    base = unobserved_baseline(x, GRID.step_hours, torch.from_numpy(tensors.offset))
    with torch.no_grad():
        base_logit = ck.model(base, torch.from_numpy(tensors.static),
                              torch.from_numpy(tensors.step_mask)).risk_logit
    for j, p in enumerate(preds):
        assert p.contributions is not None
        assert set(p.contributions) == set(FEATURES)
        total = sum(p.contributions.values())
        assert total == pytest.approx(p.logit - float(base_logit[j]), rel=1e-3, abs=1e-4)
    again = score(ck, observations(), PATIENTS, explain=True)
    assert [p.contributions for p in again] == [p.contributions for p in preds]


def test_forecast_models_return_their_forecast(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path, "seq2seq")
    preds = score(ck, observations(), PATIENTS)
    assert all(p.forecast is not None and p.forecast.shape == (3, 2) for p in preds)


def test_tensors_from_another_normaliser_or_grid_are_refused(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path)
    other = Normalizer.fit(observations(), PATIENTS, FEATURES[:2])
    with pytest.raises(ValueError, match="features"):
        score_tensors(ck, tensorise(observations(), other, GRID, patients=PATIENTS))
    with pytest.raises(ValueError, match="grid|Grid"):
        score_tensors(ck, tensorise(observations(), ck.normalizer, Grid(1.0, 12),
                                    patients=PATIENTS))
