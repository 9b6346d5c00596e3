import numpy as np
import pandas as pd
import pytest

from models import features
from models.catalogue import CATALOGUE
from models.features import Grid, Normalizer, Tensors, tensorise, tensorise_rows


def rows(*records: tuple[str, float, str, float]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=["patient_id", "time_hours", "variable", "value"])


FEATURES = ("heart_rate", "lactate")
IDENTITY = Normalizer(FEATURES, np.zeros(2), np.ones(2))


def test_mask_marks_exactly_the_bins_that_hold_an_observation():
    obs = rows(("a", 0.5, "heart_rate", 100), ("a", 3.2, "heart_rate", 90),
               ("a", 2.0, "lactate", 2.0))
    t = tensorise(obs, IDENTITY, Grid(1.0, 5))
    assert t.mask[0, :, 0].tolist() == [1, 0, 0, 1, 0]
    assert t.mask[0, :, 1].tolist() == [0, 0, 1, 0, 0]


def test_values_are_the_last_observation_in_the_bin_carried_forward():
    obs = rows(("a", 0.2, "heart_rate", 100), ("a", 0.9, "heart_rate", 120),
               ("a", 0.5, "heart_rate", 110), ("a", 3.0, "heart_rate", 80))
    t = tensorise(obs, IDENTITY, Grid(1.0, 5))
    assert t.values[0, :, 0].tolist() == [120, 120, 120, 80, 80]


def test_hours_since_last_observation_are_measured_at_bin_end():
    obs = rows(("a", 0.7, "heart_rate", 100), ("a", 2.5, "heart_rate", 90),
               ("a", 4.5, "lactate", 1.0))
    t = tensorise(obs, IDENTITY, Grid(1.0, 5))
    np.testing.assert_allclose(t.delta[0, :, 0], [0.3, 1.3, 0.5, 1.5, 2.5], atol=1e-6)
    # never observed before bin 4: hours since admission at the bin's end, and value 0 + mask 0
    np.testing.assert_allclose(t.delta[0, :, 1], [1, 2, 3, 4, 0.5], atol=1e-6)
    assert t.values[0, :4, 1].tolist() == [0, 0, 0, 0]
    assert t.mask[0, :4, 1].sum() == 0


def test_step_mask_spans_first_to_last_observed_bin_including_empty_bins():
    obs = rows(("a", 2.5, "heart_rate", 100), ("a", 5.1, "lactate", 2.0))
    t = tensorise(obs, IDENTITY, Grid(1.0, 8))
    assert t.step_mask[0].tolist() == [False, False, True, True, True, True, False, False]


def test_long_stays_slide_the_window_to_keep_the_latest_observation():
    obs = rows(("a", 1.0, "heart_rate", 100), ("a", 9.5, "heart_rate", 70))
    t = tensorise(obs, IDENTITY, Grid(1.0, 4))
    assert t.offset.tolist() == [6]
    assert t.mask[0, :, 0].tolist() == [0, 0, 0, 1]
    # the observation before the window still seeds carry-forward and hours-since
    assert t.values[0, 0, 0] == 100
    np.testing.assert_allclose(t.delta[0, 0, 0], 6.0)


def test_rows_at_or_after_until_hours_are_ignored():
    obs = rows(("a", 1.0, "heart_rate", 100), ("a", 5.0, "heart_rate", 70),
               ("b", 1.0, "heart_rate", 90))
    t = tensorise(obs, IDENTITY, Grid(1.0, 8), patient_ids=["a", "b"],
                  until_hours=np.array([5.0, 48.0]))
    assert t.mask[0, :, 0].sum() == 1
    assert t.values[0, 7, 0] == 100


def test_patients_without_rows_get_an_empty_window_in_the_requested_order():
    obs = rows(("b", 1.0, "heart_rate", 90))
    t = tensorise(obs, IDENTITY, Grid(1.0, 4), patient_ids=["a", "b"])
    assert t.patient_ids == ["a", "b"]
    assert not t.step_mask[0].any() and t.step_mask[1].any()


def test_interventions_get_their_own_channels_events_summed_rates_carried():
    obs = rows(("a", 0.5, "heart_rate", 100), ("a", 1.2, "antibiotics", 1),
               ("a", 1.7, "antibiotics", 1), ("a", 2.0, "vasopressor", 0.1),
               ("a", 4.0, "vasopressor", 0.0), ("a", 5.5, "heart_rate", 90))
    t = tensorise(obs, IDENTITY, Grid(1.0, 6), interventions=("antibiotics", "vasopressor"))
    assert t.interventions[0, :, 0].tolist() == [0, 2, 0, 0, 0, 0]
    np.testing.assert_allclose(t.interventions[0, :, 1], [0, 0, 0.1, 0.1, 0, 0])
    # interventions never leak into the measurement channels
    assert t.values.shape[2] == 2 and t.mask[0, :, 1].sum() == 0


def test_normaliser_statistics_come_from_the_rows_it_is_fitted_on():
    train = rows(("a", 1, "heart_rate", 80), ("b", 1, "heart_rate", 100))
    test = rows(("c", 1, "heart_rate", 200))
    norm = Normalizer.fit(train, None, ["heart_rate"])
    assert norm.mean[0] == pytest.approx(90)
    t = tensorise(pd.concat([train, test]), norm, Grid(1.0, 2), patient_ids=["c"])
    assert t.values[0, 1, 0] == pytest.approx((200 - 90) / norm.std[0])


def test_skewed_labs_are_normalised_on_the_log_scale():
    assert CATALOGUE["lactate"].log_scale
    train = rows(("a", 1, "lactate", 1.0), ("b", 1, "lactate", 3.0))
    norm = Normalizer.fit(train, None, ["lactate"])
    assert norm.mean[0] == pytest.approx((np.log1p(1.0) + np.log1p(3.0)) / 2)


def test_normaliser_round_trips_through_json_and_refuses_mismatches():
    patients = pd.DataFrame({"patient_id": ["a", "b"], "age": [50, 70], "sex": ["male", "female"]})
    norm = Normalizer.fit(rows(("a", 1, "heart_rate", 80), ("b", 1, "heart_rate", 100)),
                          patients, ["heart_rate"])
    again = Normalizer.from_dict(norm.to_dict())
    assert again.features == norm.features
    np.testing.assert_allclose(again.static_mean, norm.static_mean)
    bad = norm.to_dict() | {"features": ["heart_rate", "lactate"]}
    with pytest.raises(ValueError, match="feature list"):
        Normalizer.from_dict(bad)


def test_statics_are_normalised_with_missing_indicators():
    patients = pd.DataFrame({"patient_id": ["a", "b"], "age": [50.0, np.nan],
                             "sex": ["male", "female"]})
    obs = rows(("a", 1, "heart_rate", 80), ("b", 1, "heart_rate", 100))
    norm = Normalizer.fit(obs, patients, ["heart_rate"], static_features=("age", "sex"))
    t = tensorise(obs, norm, Grid(1.0, 2), patients=patients)
    # columns: age_z, sex_z, age_missing, sex_missing
    assert t.static[1].tolist()[2:] == [1.0, 0.0]
    assert t.static[1, 0] == 0.0
    assert t.static[0, 1] != t.static[1, 1]


def test_one_function_serves_a_single_request_and_a_large_batch_identically():
    rng = np.random.default_rng(0)
    n = 300
    obs = pd.DataFrame({
        "patient_id": rng.integers(0, 50, n).astype(str),
        "time_hours": rng.uniform(0, 48, n),
        "variable": rng.choice(FEATURES, n),
        "value": rng.uniform(1, 100, n),
    })
    norm = Normalizer.fit(obs, None, FEATURES)
    batch = tensorise(obs, norm)
    pid = batch.patient_ids[7]
    single = tensorise(obs[obs.patient_id == pid], norm)
    assert isinstance(single, Tensors)
    np.testing.assert_array_equal(single.values[0], batch.values[7])
    np.testing.assert_array_equal(single.delta[0], batch.delta[7])
    assert single.inputs().shape == (1, 48, 3 * len(FEATURES))


def test_the_array_path_gives_the_dataframe_paths_tensors():
    """The service tensorises without pandas; training with DataFrames: same bytes."""
    rng = np.random.default_rng(3)
    names = ["heart_rate", "lactate", "sbp", "antibiotics", "vasopressor", "fluid_bolus",
             "mech_vent", "glucose"]  # glucose: not a feature of this normaliser, ignored
    n_rows, n_stays = 400, 5
    patient = rng.integers(0, n_stays - 1, n_rows)  # the last stay has no rows at all
    hours = rng.uniform(0, 70, n_rows).round(2)  # beyond the 48 h window: offsets
    variables = [names[i] for i in rng.integers(0, len(names), n_rows)]
    value = np.array([rng.uniform(*CATALOGUE[v].typical) for v in variables])
    statics = [{"age": 70.0, "sex": "female"}, {"sex": "male", "weight": 81.5}, {},
               {"age": 33, "height": 180.0, "sex": None}, {"age": 90.0}]
    norm = Normalizer(("heart_rate", "lactate", "sbp"), np.array([90.0, 1.0, 120.0]),
                      np.array([15.0, 0.5, 20.0]), static_mean=np.array([60.0, 0.5, 80, 170]),
                      static_std=np.array([15.0, 0.5, 20, 10]))
    frame = pd.DataFrame({"patient_id": patient.astype(str), "time_hours": hours,
                          "variable": variables, "value": value})
    table = pd.DataFrame([{"patient_id": str(i), **s} for i, s in enumerate(statics)])
    ids = [str(i) for i in range(n_stays)]
    expected = tensorise(frame, norm, Grid(1.0, 48), patients=table, patient_ids=ids)
    got = tensorise_rows(patient, hours, variables, value, statics, norm, Grid(1.0, 48))
    assert got.patient_ids == ids and got.offset.max() > 0
    for name in ("values", "mask", "delta", "static", "step_mask", "offset", "interventions"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)


def test_rows_in_time_order_skip_the_sort_and_give_the_sorted_tensors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows stay by stay in time order skip the sort; in another order they are sorted:
    the same grid either way (the latest of several rows in a bin, ties: the later row; a
    NaN as the latest value: the bin counts as unobserved; carry-forward; hours since)."""
    rng = np.random.default_rng(5)
    n = 2_000
    obs = pd.DataFrame({
        "patient_id": rng.integers(0, 40, n).astype(str),
        "time_hours": rng.integers(0, 140, n) / 2,  # repeated times in a bin; past 48 h
        "variable": rng.choice(FEATURES, n),
        "value": np.where(rng.uniform(size=n) < 0.05, np.nan, rng.uniform(1, 100, n)),
    })
    ordered = obs.sort_values(["patient_id", "time_hours"], kind="stable")
    assert (ordered.groupby(["patient_id", "time_hours", "variable"]).size() > 1).any()
    assert ordered.groupby(["patient_id", "time_hours", "variable"]).value.last().isna().any()
    # the stays in reverse order, each stay's rows (and ties) in the same order
    blocks = [stay for _, stay in ordered.groupby("patient_id", sort=True)][::-1]
    reversed_stays = pd.concat(blocks)
    seen: list[bool] = []
    check = features._in_time_order

    def watched(stay: np.ndarray, time: np.ndarray) -> bool:
        seen.append(check(stay, time))
        return seen[-1]

    monkeypatch.setattr(features, "_in_time_order", watched)
    fast = tensorise(ordered, IDENTITY)
    sorted_ = tensorise(reversed_stays, IDENTITY)
    assert seen == [True, False]
    for name in ("values", "mask", "delta", "step_mask", "offset"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(sorted_, name),
                                      err_msg=name)


def test_interventions_after_the_window_are_left_out_not_an_index_error():
    obs = rows(("a", 1.0, "heart_rate", 80), ("a", 60.0, "antibiotics", 1),
               ("b", 2.0, "vasopressor", 0.1))  # b: an intervention and no measurement
    t = tensorise(obs, IDENTITY, Grid(1.0, 48))
    assert t.interventions[0].sum() == 0
    assert t.interventions[1, 2:, 1].tolist() == [pytest.approx(0.1)] * 46
