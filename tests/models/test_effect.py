"""models.effect: inputs on the grid, plan matching, the networks' causality and IO checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.effect import (
    EffectConfig,
    EffectModel,
    EffectNet,
    PropensityNet,
    effect_meta,
    effect_tensors,
    history_inputs,
    load_effect,
    match_plans,
)
from models.features import Grid, tensorise
from models.networks import ModelConfig, build_model
from tests.app.support import normalizer
from training.effect import canonical_templates
from training.interventions import PLANS

GRID = Grid(1.0, 48)


def config(**kw: object) -> EffectConfig:
    norm = normalizer()
    base: dict[str, object] = dict(arch="gru", n_features=len(norm.features), n_interventions=4,
                                   n_static=norm.n_static_inputs, n_plans=3, n_steps=48,
                                   hidden=8, dropout=0.0,
                                   map_index=list(norm.features).index("map"))
    base.update(kw)
    return EffectConfig(**base)  # type: ignore[arg-type]


def stay() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": "a",
        "time_hours": [1.0, 3.5, 5.0, 9.0],
        "variable": ["map", "heart_rate", "antibiotics", "map"],
        "value": [70.0, 100.0, 1.0, 60.0]})


def test_history_spans_to_the_bin_before_the_decision_and_carries_treatments() -> None:
    hist = tensorise(stay(), normalizer(), GRID, until_hours=np.array([12.0]))
    x, mask = history_inputs(hist, np.array([12]))
    assert mask[0].nonzero()[0].tolist() == list(range(1, 12))  # first row's bin .. D - 1
    f = len(normalizer().features)
    given = x[0, :, 3 * f + 4]  # the antibiotics given-indicator
    assert given.tolist() == [1.0 if b == 5 else 0.0 for b in range(48)]
    since = x[0, :, 3 * f + 8]  # hours since the last dose, growing after bin 5
    assert since[6] < since[11]


def test_plans_match_a_template_only_when_equal_inside_the_window() -> None:
    templates = canonical_templates(normalizer(), GRID)  # (3, 48, 4)
    d = np.array([30])
    abx = templates[1].copy()
    abx[18:] = 99.0  # bins past the window for a decision at 30 h do not count
    single = np.zeros_like(abx)
    single[0, 0] = 1.0  # one dose, no schedule
    classes = match_plans(np.stack([templates[0], abx, templates[2], single])[None], d,
                          templates)
    assert classes.tolist() == [[0, 1, 2, -1]]


def test_risk_ignores_plan_bins_past_the_window_and_reads_those_inside() -> None:
    torch.manual_seed(0)
    cfg = config()
    net = EffectNet(cfg).eval()
    b, t = 2, 48
    x = torch.randn(b, t, cfg.n_inputs)
    static = torch.randn(b, cfg.n_static)
    decision = torch.tensor([40, 40])
    mask = torch.arange(t)[None, :] < decision[:, None]
    plan = torch.zeros(b, t - 12, 4)
    plan[1, 20, 1] = 1.0  # bin 40 + 20 = 60: past the window
    with torch.no_grad():
        risk, _ = net(x[[0, 0]], static[[0, 0]], mask, decision, plan)
        assert risk[0] == risk[1]
        plan[1, 3, 1] = 1.0  # bin 43: inside
        risk, _ = net(x[[0, 0]], static[[0, 0]], mask, decision, plan)
        assert risk[0] != risk[1]


def test_an_untrained_map_head_forecasts_the_last_value() -> None:
    torch.manual_seed(1)
    cfg = config()
    net = EffectNet(cfg).eval()
    x = torch.randn(1, 48, cfg.n_inputs)
    with torch.no_grad():
        _, forecast = net(x, torch.randn(1, cfg.n_static), torch.ones(1, 48, dtype=torch.bool),
                          torch.tensor([20]), torch.zeros(1, 28, 4))
    assert forecast is not None
    assert torch.allclose(forecast, x[0, 19, cfg.map_index].expand(1, 6))


def _effect_checkpoint(tmp_path: Path, drop: str | None = None) -> Path:
    norm, cfg = normalizer(), config()
    torch.manual_seed(2)
    model = EffectModel(cfg, PLANS, canonical_templates(norm, GRID), [EffectNet(cfg)],
                        [EffectNet(cfg)], PropensityNet(cfg), {"antibiotics_now": (-1.0, 0.5)},
                        0.9, 85.0, 15.0, (12, 36))
    tensors = {k: v for k, v in effect_tensors(model).items()
               if drop is None or not k.startswith(drop)}
    rcfg = ModelConfig(arch="gru", n_inputs=3 * len(norm.features),
                       n_static=norm.n_static_inputs, hidden=8)
    return save_checkpoint(tmp_path, "e", build_model(rcfg), rcfg, norm, GRID, task="effect",
                           extra={"effect": effect_meta(model)}, tensors=tensors)


def test_effect_model_loads_once_per_version(tmp_path: Path) -> None:
    ckpt = load_checkpoint(_effect_checkpoint(tmp_path))
    assert load_effect(ckpt) is load_effect(ckpt)


def test_an_effect_checkpoint_missing_a_network_is_refused(tmp_path: Path) -> None:
    ckpt = load_checkpoint(_effect_checkpoint(tmp_path, drop="effect.propensity."))
    with pytest.raises(CheckpointError, match="propensity effect network 0"):
        load_effect(ckpt)


def test_a_risk_checkpoint_has_no_effect_model(tmp_path: Path) -> None:
    norm = normalizer()
    rcfg = ModelConfig(arch="gru", n_inputs=3 * len(norm.features),
                       n_static=norm.n_static_inputs, hidden=8)
    ckpt = load_checkpoint(save_checkpoint(tmp_path, "r", build_model(rcfg), rcfg, norm, GRID))
    with pytest.raises(CheckpointError, match="no treatment-effect model"):
        load_effect(ckpt)


def test_intervals_hold_the_estimate_even_when_calibration_moves_them_aside() -> None:
    norm, cfg = normalizer(), config()
    model = EffectModel(cfg, PLANS, canonical_templates(norm, GRID), [], [], PropensityNet(cfg),
                        {"antibiotics_now": (-2.0, 0.5), "vasopressor_6h": (-0.4, -0.3)},
                        0.9, 85.0, 15.0, (12, 36))
    effect = np.array([-0.05, 0.07, 0.02])
    risk, base = np.array([0.15, 0.27, 0.22]), np.full(3, 0.2)
    iv = model.intervals(effect, risk, base, np.array([1, 2, -1]))
    scale = np.maximum(risk, base) + 0.01
    np.testing.assert_allclose(iv[0], effect[0] + np.array([-2.0, 0.5]) * scale[0])
    np.testing.assert_allclose(iv[1], [effect[1] - 0.4 * scale[1], effect[1]])  # widened
    np.testing.assert_allclose(iv[2], effect[2] + np.array([-2.0, 0.5]) * scale[2])  # widest
