"""training.train and its helpers: config, split, prefixes, calibration, publication."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import latest_version_dir, load_checkpoint
from models.features import Grid, Normalizer, tensorise
from training.calibration import (
    MIN_CALIBRATION_EVENTS,
    expected_calibration_error,
    fit_temperature,
    sigmoid,
)
from training.config import ConfigError, TrainConfig
from training.data import load_dataset
from training.prefixes import StayTensors, cut_prefix, forecast_targets, sample_prefix_bins
from training.splits import split_patients
from training.train import build_parser, config_from_args, main


def parse(argv):
    return config_from_args(build_parser().parse_args(argv))


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\narch = "gru"\nhidden = 32\nlr = 0.01\nsplit = [0.8, 0.1, 0.1]\n')
    cfg = parse(["--config", str(f), "--data", "d", "--hidden", "16"])
    assert (cfg.arch, cfg.hidden, cfg.lr, cfg.split) == ("gru", 16, 0.01, (0.8, 0.1, 0.1))
    assert cfg.epochs == TrainConfig().epochs


def test_config_file_with_unknown_key_is_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("hiden = 32\n")
    with pytest.raises(ConfigError, match="hiden"):
        parse(["--config", str(f), "--data", "d"])


@pytest.mark.parametrize("argv, message", [
    (["--arch", "jordan", "--bidirectional"], "bidirectional"),
    (["--dropout", "1.5"], "dropout"),
    (["--split", "0.5,0.5,0.5"], "split"),
    (["--min-prefix-hours", "60"], "prefix"),
])
def test_bad_settings_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(["--data", "d", *argv])


def test_cli_reports_a_missing_data_directory_without_a_traceback(tmp_path, capsys):
    rc = main(["--data", str(tmp_path / "nope"), "--model-dir", str(tmp_path)])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_split_is_seeded_patient_level_and_disjoint():
    ids = [f"p{i:03d}" for i in range(200)]
    a, b = split_patients(ids, 5), split_patients(list(reversed(ids)), 5)
    assert a == b
    parts = [set(a.train), set(a.val), set(a.test)]
    assert sum(map(len, parts)) == 200 and set.union(*parts) == set(ids)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert (len(a.train), len(a.val), len(a.test)) == (140, 30, 30)
    assert split_patients(ids, 6).test != a.test
    with pytest.raises(ValueError, match="too few"):
        split_patients(["a", "b"], 0)


def test_cross_validation_folds_partition_the_patients_into_disjoint_tests():
    ids = [f"p{i:03d}" for i in range(103)]
    splits = [split_patients(ids, 5, (0.8, 0.2, 0.0), fold=(k, 5)) for k in range(5)]
    tests = [set(s.test) for s in splits]
    assert sorted(len(t) for t in tests) == [20, 20, 21, 21, 21]
    assert set.union(*tests) == set(ids) and sum(map(len, tests)) == 103
    for s in splits:
        assert not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
        assert len(s.val) == round(0.2 * (103 - len(s.test)))
        assert set(s.train) | set(s.val) | set(s.test) == set(ids)
    assert splits[2].to_dict()["fold"] == [2, 5]
    assert split_patients(ids, 5, fold=(2, 5)) == split_patients(ids[::-1], 5, fold=(2, 5))
    with pytest.raises(ConfigError, match="folds"):
        parse(["--data", "d", "--folds", "5", "--fold", "5"])
    assert parse(["--data", "d", "--folds", "5", "--fold", "4"]).fold == 4


def test_temperature_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-1.0, 1.5, 20000)
    y = (rng.random(20000) < sigmoid(true_logit)).astype(float)
    t = fit_temperature(true_logit * 2.5, y)  # logits 2.5x too confident
    assert t == pytest.approx(2.5, rel=0.05)
    before = expected_calibration_error(sigmoid(true_logit * 2.5), y)
    after = expected_calibration_error(sigmoid(true_logit * 2.5 / t), y)
    assert after < 0.02 < before


def test_a_validation_split_with_few_deaths_does_not_sharpen_the_model_into_extremes(
        caplog: pytest.LogCaptureFixture) -> None:
    # 75 stays, 11 deaths, logits that happen to separate them: the NLL fit would sharpen
    # them twenty-fold (T = 0.05, probabilities 0.00-1.00); too few deaths to tell.
    rng = np.random.default_rng(3)
    y = (rng.random(75) < 0.15).astype(float)
    logits = 0.6 * (y - 0.5) + rng.normal(0.0, 0.1, 75)
    assert int(y.sum()) < MIN_CALIBRATION_EVENTS
    assert fit_temperature(logits, y) == 1.0
    assert "temperature scaling skipped" in caplog.text
    # With enough of both outcomes the fit runs (the same logits, repeated).
    assert fit_temperature(np.tile(logits, 3), np.tile(y, 3)) < 0.2


def test_ece_of_a_constant_forecast_is_its_gap_to_the_event_rate():
    y = np.array([1, 0, 0, 0] * 25, dtype=float)
    assert expected_calibration_error(np.full(100, 0.4), y) == pytest.approx(0.15)


def test_prefix_cut_equals_tensorising_only_the_rows_before_the_cut(cohort):
    ds = load_dataset(cohort)
    feats = sorted(ds.observations["variable"].unique())
    norm = Normalizer.fit(ds.observations, ds.patients, [f for f in feats if f != "fio2"])
    ids = sorted(ds.patients["patient_id"])[:40]
    full = tensorise(ds.observations, norm, Grid(), ds.patients, ids)
    cut_bins = np.random.default_rng(1).integers(6, 49, len(ids))
    ref = tensorise(ds.observations, norm, Grid(), ds.patients, ids,
                    until_hours=cut_bins.astype(float))
    stays = StayTensors.from_tensors(full, np.zeros(len(ids)), np.zeros(len(ids)))
    x, step_mask = cut_prefix(stays.x, stays.observed, torch.from_numpy(cut_bins))
    assert (full.offset == 0).all()
    assert torch.equal(step_mask, torch.from_numpy(ref.step_mask))
    # Inside the span the inputs agree exactly; outside it no encoder looks (tensorise
    # carries values forward there, the cut zeroes them), so the model's answers agree too.
    inside = step_mask.unsqueeze(2)
    want = torch.from_numpy(ref.inputs())
    torch.testing.assert_close(x * inside, want * inside)
    from models.networks import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("lstm", x.shape[2], stays.static.shape[1], hidden=8,
                                    bidirectional=True)).eval()
    with torch.no_grad():
        a = model(x, stays.static, step_mask)
        b = model(want, stays.static, step_mask)
    torch.testing.assert_close(a.risk_logit, b.risk_logit)
    torch.testing.assert_close(a.attention, b.attention)


def test_bidirectional_model_output_ignores_everything_after_the_prefix():
    from models.networks import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("lstm", 12, 4, hidden=8, bidirectional=True)).eval()
    x = torch.randn(3, 48, 12)
    x[:, :, 4:8] = 1.0  # every bin observed
    observed = torch.ones(3, 48, dtype=torch.bool)
    n_bins = torch.tensor([6, 20, 47])
    changed = x.clone()
    changed[0, 6:], changed[1, 20:], changed[2, 47:] = 9.0, -9.0, 5.0
    a = model(*cut_prefix(x, observed, n_bins)[:1], torch.zeros(3, 4),
              cut_prefix(x, observed, n_bins)[1])
    b = model(*cut_prefix(changed, observed, n_bins)[:1], torch.zeros(3, 4),
              cut_prefix(changed, observed, n_bins)[1])
    torch.testing.assert_close(a.risk_logit, b.risk_logit)


def test_full_prefix_share_puts_that_share_at_the_full_window_and_the_rest_uniform():
    first = torch.zeros(20000, dtype=torch.long)
    uniform = sample_prefix_bins(first, 6, 48, np.random.default_rng(0))
    assert torch.equal(uniform, sample_prefix_bins(first, 6, 48, np.random.default_rng(0),
                                                   full_share=0.0))
    mixed = sample_prefix_bins(first, 6, 48, np.random.default_rng(0), full_share=0.5)
    assert int(mixed.min()) == 6 and int(mixed.max()) == 48
    full = float((mixed == 48).float().mean())
    assert full == pytest.approx(0.5 + 0.5 / 43, abs=0.015)  # the share + uniform's own 48s
    assert float((mixed[mixed < 48] == 6).float().mean()) == pytest.approx(1 / 42, abs=0.01)
    late = torch.full((4,), 30)  # never shorter than the first observation + 1
    assert bool((sample_prefix_bins(late, 6, 48, np.random.default_rng(1), 0.5) >= 31).all())


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_planned_epochs():
    from training.loop import _set_lr

    opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    seen = []
    for schedule in ("constant", "cosine"):
        cfg = TrainConfig(data="d", lr=0.01, lr_schedule=schedule)
        for progress in (0.0, 0.5, 1.0):
            _set_lr(opt, cfg, progress)
            seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.005, 0.0])
    with pytest.raises(ConfigError, match="lr_schedule"):
        parse(["--data", "d", "--lr-schedule", "step"])


def test_forecast_targets_are_the_bins_after_the_last_observed_one():
    x = torch.zeros(1, 10, 6)  # F = 2: values (0, 1), mask (2, 3), delta (4, 5)
    x[0, :, 0] = torch.arange(10.0)
    x[0, :, 2] = 1.0
    step_mask = torch.zeros(1, 10, dtype=torch.bool)
    step_mask[0, 2:7] = True  # last observed bin 6
    values, mask = forecast_targets(x, step_mask, torch.tensor([0]), 2, horizon=5)
    assert values[0, :, 0].tolist()[:3] == [7.0, 8.0, 9.0]
    assert mask[0, :, 0].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # past the window: no loss


def test_train_publishes_a_loadable_calibrated_checkpoint_with_its_split(trained, cohort):
    model_dir, version_dir = trained
    ckpt = load_checkpoint(version_dir)
    assert ckpt.task == "risk" and ckpt.config.bidirectional and ckpt.config.arch == "lstm"
    assert 0.05 < ckpt.temperature < 20
    split = ckpt.extra["split"]
    assert split["seed"] == 3 and len(split["test_ids"]) == 24
    assert ckpt.fingerprint == load_dataset(cohort).fingerprint
    assert len(ckpt.extra["history"]) == 2
    assert {"val_auroc", "test_auroc", "temperature"} <= set(ckpt.metrics)
    assert not (model_dir / ".runs" / "default").exists()  # run state cleared on success


def test_normaliser_is_fitted_on_the_training_split_only(trained, cohort):
    ckpt = load_checkpoint(trained[1])
    ds = load_dataset(cohort)
    split = split_patients(ds.patients["patient_id"], 3, (0.7, 0.15, 0.15))
    assert list(split.test) == ckpt.extra["split"]["test_ids"]
    obs = ds.observations[ds.observations["variable"] == "heart_rate"]
    i = ckpt.normalizer.features.index("heart_rate")
    train_mean = obs[obs["patient_id"].isin(set(split.train))]["value"].mean()
    assert ckpt.normalizer.mean[i] == pytest.approx(train_mean)
    assert ckpt.normalizer.mean[i] != pytest.approx(obs["value"].mean(), abs=1e-9)


def test_rows_past_the_window_do_not_shift_what_training_sees(cohort, tmp_path):
    import shutil

    import pandas as pd

    from training.train import prepare

    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    obs = pd.read_parquet(data / "observations.parquet")
    late = obs.groupby("patient_id").head(1).assign(time_hours=48.0)  # one row per stay
    pd.concat([obs, late]).to_parquet(data / "observations.parquet")
    cfg = TrainConfig(data=str(cohort), seed=3)
    a = prepare(cfg).stays["train"]
    b = prepare(TrainConfig(data=str(data), seed=3)).stays["train"]
    assert a.patient_ids == b.patient_ids and torch.equal(a.x, b.x)


def test_forecast_task_writes_a_forecast_checkpoint(cohort, tmp_path):
    rc = main(["--data", str(cohort), "--task", "forecast", "--name", "forecast",
               "--model-dir", str(tmp_path), "--hidden", "8", "--epochs", "1",
               "--threads", "1", "--targets", "heart_rate,sbp,lactate", "--horizon", "4"])
    assert rc == 0
    ckpt = load_checkpoint(latest_version_dir(tmp_path, "forecast"))
    assert ckpt.task == "forecast" and ckpt.config.arch == "seq2seq"
    assert ckpt.extra["targets"] == ["heart_rate", "sbp", "lactate"]
    assert ckpt.extra["horizon"] == 4 and ckpt.config.horizon == 4
    feats = list(ckpt.normalizer.features)
    assert list(ckpt.config.target_index) == [feats.index(t) for t in ckpt.extra["targets"]]
    json.loads((Path(ckpt.path) / "model.json").read_text())
