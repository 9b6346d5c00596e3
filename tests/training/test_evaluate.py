"""training.evaluate: cohort choice, metrics with intervals, baselines, plots, forecasts."""

import json

import numpy as np
import pytest

from models.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.evaluate import EvalConfig, evaluate, main
from training.metrics import binary_report, bootstrap_indices, compare_auroc
from training.train import train

from .conftest import TINY


def report(model_dir, data, out, **kw):
    cfg = EvalConfig(str(model_dir), "default", str(data), str(out), n_boot=40,
                     explain_sample=6, **kw)
    metrics = evaluate(cfg)
    on_disk = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN
    return metrics, on_disk


def test_on_its_training_data_only_the_held_out_test_split_is_scored(trained, cohort,
                                                                     tmp_path):
    model_dir, version = trained
    _, m = report(model_dir, cohort, tmp_path)
    assert m["n"] == len(load_checkpoint(version).extra["split"]["test_ids"]) == 24
    assert "held-out" in m["data"]["scope"]
    assert m["baselines"]["last_value_lr"]["fitted_on"].startswith("training cohort")


def test_other_data_is_scored_whole_with_every_metric_and_baseline(trained, other_cohort,
                                                                   tmp_path):
    model_dir, _ = trained
    _, m = report(model_dir, other_cohort, tmp_path)
    assert m["n"] == 80 and "not seen" in m["data"]["scope"]
    for key in ("auroc", "auprc", "brier", "ece", "los_mae"):
        assert isinstance(m[key], float)
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi
    assert 0.5 < m["oracle_auroc"] <= 1.0 and m["news2_auroc"] is not None
    assert m["last_value_lr_auroc"] is not None and "saps_i" not in m["baselines"]
    assert set(m["comparisons"]) == {"auroc_minus_news2", "auroc_minus_last_value_lr",
                                     "auroc_minus_oracle"}
    att = m["attention"]
    assert att["n"] > 0 and 0 < att["uniform_share_after_onset"] < 1
    assert 0 <= att["mass_after_onset"] <= 1 and 0 <= att["top_variable_driven_rate"] <= 1
    for png in ("roc.png", "reliability.png", "los.png", "attention.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_saps_i_is_reported_where_the_patients_table_has_it(trained, other_cohort, tmp_path):
    import shutil

    import pandas as pd

    data = tmp_path / "data"
    shutil.copytree(other_cohort, data)
    pats = pd.read_parquet(data / "patients.parquet")
    rng = np.random.default_rng(0)
    pats["saps_i"] = np.where(rng.random(len(pats)) < 0.1, np.nan,
                              10 + 8 * pats["died"] + rng.normal(0, 4, len(pats)))
    pats.to_parquet(data / "patients.parquet")
    _, m = report(trained[0], data, tmp_path / "out")
    assert m["baselines"]["saps_i"]["n"] < 80 and m["saps_i_auroc"] > 0.7


def test_its_own_training_data_without_a_test_split_is_refused(cohort, tmp_path, capsys):
    cfg = TrainConfig(data=str(cohort), name="default", model_dir=str(tmp_path / "m"),
                      split=(0.8, 0.2, 0.0), **dict(TINY, epochs=1))
    train(cfg)
    rc = main(["--model-dir", str(tmp_path / "m"), "--name", "default", "--data", str(cohort),
               "--out", str(tmp_path / "r")])
    assert rc == 2 and "no held-out test split" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_cli_names_a_missing_model(tmp_path, cohort, capsys):
    rc = main(["--model-dir", str(tmp_path), "--name", "nope", "--data", str(cohort),
               "--out", str(tmp_path / "r")])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_forecast_report_compares_with_carry_forward(cohort, tmp_path):
    cfg = TrainConfig(data=str(cohort), name="default", model_dir=str(tmp_path / "m"),
                      task="forecast", targets=("heart_rate", "sbp"), horizon=3,
                      **dict(TINY, epochs=1))
    train(cfg)
    _, m = report(tmp_path / "m", cohort, tmp_path / "r")
    assert m["model"]["task"] == "forecast" and set(m["targets"]) == {"heart_rate", "sbp"}
    for row in m["targets"].values():
        assert row["n"] > 0 and row["mae"] > 0 and row["carry_forward_mae"] > 0
    assert (tmp_path / "r" / "forecast_mae.png").exists()


def test_bootstrap_interval_of_a_perfect_score_is_degenerate_and_of_noise_covers_half():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(float)
    boot = bootstrap_indices(len(y), 200, 0)
    perfect = binary_report(y, y * 0.9 + 0.05, boot)
    assert perfect["auroc"] == 1.0 and perfect["auroc_ci"] == [1.0, 1.0]
    noise = binary_report(y, rng.random(400), boot)
    lo, hi = noise["auroc_ci"]
    assert lo < 0.5 < hi and hi - lo < 0.2


def test_paired_difference_of_a_score_with_itself_is_exactly_zero():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.4).astype(float)
    s = y + rng.normal(0, 1, 300)
    d = compare_auroc(y, s, s, bootstrap_indices(300, 50, 0))
    assert d["difference"] == 0.0 and d["difference_ci"] == [0.0, 0.0]


def test_scores_with_missing_values_are_scored_on_the_rest():
    y = np.array([0, 1] * 50, dtype=float)
    s = np.where(np.arange(100) < 10, np.nan, y)
    rep = binary_report(y, s, bootstrap_indices(100, 20, 0), probability=False)
    assert rep["n"] == 90 and rep["auroc"] == pytest.approx(1.0) and "brier" not in rep


@pytest.mark.parametrize("name", ["auroc", "auprc", "brier", "ece"])
def test_vectorised_bootstrap_metric_equals_scikit_learn_on_each_resample(name):
    from training.metrics import BINARY_METRICS, bootstrap_weights

    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.25).astype(float)
    p = np.round(np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1), 1)  # many ties
    boot = bootstrap_indices(300, 5, 3)
    point, vectorised = BINARY_METRICS[name]
    got = vectorised(bootstrap_weights(boot, 300), y, p)
    want = [point(y[b], p[b]) for b in boot]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
