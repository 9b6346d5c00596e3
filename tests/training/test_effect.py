"""training.effect: the what-if networks fitted, weighted, calibrated, saved and evaluated."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from models.checkpoint import load_checkpoint, save_checkpoint
from models.effect import effect_meta, effect_tensors, load_effect
from tests.training.conftest import TINY
from training.config import TrainConfig
from training.data import load_dataset
from training.effect import (
    conformal_quantiles,
    effect_stays,
    fit_effect,
    stabilised_weights,
)
from training.evaluate import EvalConfig, evaluate
from training.interventions import PLANS
from training.loop import Distributed
from training.synthesize import write_cohort
from training.train import prepare, train


@pytest.fixture(scope="module")
def treated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("treated")
    write_cohort(240, seed=21, out=out, confounding=3.0)
    return out


@pytest.fixture(scope="module")
def cfg(treated: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    torch.set_num_threads(1)
    return TrainConfig(data=str(treated), model_dir=str(tmp_path_factory.mktemp("m")),
                       name="whatif", task="effect", arch="gru", seed=5, effect_members=1,
                       **TINY)


@pytest.fixture(scope="module")
def published(cfg: TrainConfig) -> Path:
    res = train(cfg)
    assert res.version_dir is not None
    return res.version_dir


def test_effect_training_publishes_a_risk_model_with_what_if_networks(published: Path) -> None:
    meta = json.loads((published / "model.json").read_text())
    assert meta["task"] == "effect"
    effect = meta["extra"]["effect"]
    assert effect["plans"] == list(PLANS)
    assert set(effect["interval"]) == {"antibiotics_now", "vasopressor_6h"}
    for lo, hi in effect["interval"].values():
        assert lo <= hi
    with safe_open(str(published / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("extra::effect.propensity.0.") for k in keys)
    assert any(k.startswith("extra::effect.adjusted.0.") for k in keys)
    assert any(k.startswith("extra::effect.naive.0.") for k in keys)
    assert (published / "model.safetensors").read_bytes()[8:9] == b"{"  # never a pickle
    ckpt = load_checkpoint(published)
    assert ckpt.task == "effect" and ckpt.metrics["effect_val_n"] > 0


def test_checkpoint_round_trip_keeps_outcomes_and_propensity(cfg: TrainConfig,
                                                            tmp_path: Path) -> None:
    prep = prepare(cfg)
    ds = load_dataset(cfg.data)
    fitted = fit_effect(cfg, ds, prep.split, prep.normalizer, prep.grid, Distributed())
    model = fitted.model
    from models.networks import ModelConfig, build_model

    rcfg = ModelConfig(arch="gru", n_inputs=3 * len(prep.normalizer.features),
                       n_static=prep.normalizer.n_static_inputs, hidden=8)
    version = save_checkpoint(tmp_path, "rt", build_model(rcfg), rcfg, prep.normalizer,
                              prep.grid, task="effect", extra={"effect": effect_meta(model)},
                              tensors=effect_tensors(model))
    loaded = load_effect(load_checkpoint(version))
    stays = effect_stays(ds, list(prep.split.test), prep.normalizer, prep.grid,
                         model.templates, model.cfg)
    dec = stays.decision.numpy()
    before = model.outcomes(stays.hist, dec, model.canonical_plans(dec))
    after = loaded.outcomes(stays.hist, dec, loaded.canonical_plans(dec))
    for field in ("risk", "naive_risk", "map", "naive_map", "propensity", "plan_class"):
        np.testing.assert_array_equal(getattr(before, field), getattr(after, field))
    np.testing.assert_allclose(after.propensity.sum(axis=1), 1.0, rtol=1e-9)
    assert loaded.interval == model.interval and loaded.decision_range == model.decision_range


def test_stabilised_weights_are_marginal_over_propensity_truncated_and_mean_one() -> None:
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.02, 0.49, 0.49], [0.6, 0.2, 0.2]])
    plan = np.array([0, 1, 0, 2])
    marginal = np.array([0.5, 0.25, 0.25])
    raw = marginal[plan] / probs[np.arange(4), plan]  # 1, 0.3125, 25, 1.25
    w, bounds = stabilised_weights(probs, plan, marginal, bounds=(0.5, 5.0))
    clipped = np.clip(raw, 0.5, 5.0)
    np.testing.assert_allclose(w, clipped / clipped.mean())
    assert w.mean() == pytest.approx(1.0) and bounds == (0.5, 5.0)
    w, bounds = stabilised_weights(probs, plan, marginal)  # default: 1st/99th percentiles
    assert bounds[0] > raw.min() and bounds[1] < raw.max()


def test_conformal_quantiles_give_the_nominal_coverage_on_fresh_draws() -> None:
    rng = np.random.default_rng(0)
    lo, hi = conformal_quantiles(rng.standard_t(3, 4000), 0.9)
    fresh = rng.standard_t(3, 20000)
    assert 0.88 <= np.mean((fresh >= lo) & (fresh <= hi)) <= 0.92
    assert conformal_quantiles(np.array([]), 0.9) == (0.0, 0.0)


def test_effect_task_needs_decision_hours(cohort: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(cohort), model_dir=str(tmp_path), task="effect",
                      effect_members=1, **TINY)
    with pytest.raises(ValueError, match="decision hour"):
        train(cfg)


def test_evaluate_scores_the_effects_against_counterfactual_truth(published: Path,
                                                                  cfg: TrainConfig,
                                                                  tmp_path: Path) -> None:
    m = evaluate(EvalConfig(cfg.model_dir, cfg.name, cfg.data, str(tmp_path), n_boot=10,
                            explain_sample=0))
    for key in ("pehe", "ate_error", "naive_pehe", "naive_ate_error", "coverage", "map_rmse",
                "naive_map_rmse", "last_value_map_rmse", "auroc"):
        assert m[key] is not None and m[key] >= 0, key
    plans = m["effect"]["plans"]
    assert set(plans) == set(PLANS)
    worst = max(plans[p]["pehe"] for p in PLANS[1:])
    assert m["pehe"] == worst and m["pehe_plan"] in PLANS[1:]
    assert m["coverage"] == min(plans[p]["coverage"] for p in PLANS[1:])
    assert plans["vasopressor_6h"]["true_ate"] == 0.0  # a vasopressor leaves the course alone
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["effect"]["plans"]["antibiotics_now"]["pehe"] == pytest.approx(
        plans["antibiotics_now"]["pehe"])
    for plot in ("effect_scatter.png", "effect_by_propensity.png"):
        assert plot in m["plots"] and (tmp_path / plot).stat().st_size > 0


def test_a_second_member_changes_the_ensemble(cfg: TrainConfig) -> None:
    prep = prepare(cfg)
    ds = load_dataset(cfg.data)
    two = fit_effect(replace(cfg, effect_members=2), ds, prep.split, prep.normalizer,
                     prep.grid, Distributed()).model
    assert len(two.adjusted) == len(two.naive) == 2
    a, b = (dict(net.state_dict()) for net in two.adjusted)
    assert any(not torch.equal(a[k], b[k]) for k in a)

