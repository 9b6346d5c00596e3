import math

import numpy as np
import pandas as pd
import pytest

from models.news2 import NEWS2_PARAMETERS, news2, news2_from_observations, news2_missing

# Every printed band edge of the RCP 2017 chart, both sides of each cut.
EDGES = [
    # respiration rate: <=8:3, 9-11:1, 12-20:0, 21-24:2, >=25:3
    ("resp_rate", 0, 3), ("resp_rate", 8, 3), ("resp_rate", 9, 1), ("resp_rate", 11, 1),
    ("resp_rate", 12, 0), ("resp_rate", 20, 0), ("resp_rate", 21, 2), ("resp_rate", 24, 2),
    ("resp_rate", 25, 3), ("resp_rate", 60, 3),
    # SpO2 scale 1: <=91:3, 92-93:2, 94-95:1, >=96:0
    ("spo2", 50, 3), ("spo2", 91, 3), ("spo2", 92, 2), ("spo2", 93, 2), ("spo2", 94, 1),
    ("spo2", 95, 1), ("spo2", 96, 0), ("spo2", 100, 0),
    # supplemental oxygen: fio2 > 0.21 -> 2
    ("fio2", 0.21, 0), ("fio2", 0.22, 2), ("fio2", 0.4, 2), ("fio2", 1.0, 2),
    # systolic BP: <=90:3, 91-100:2, 101-110:1, 111-219:0, >=220:3
    ("sbp", 40, 3), ("sbp", 90, 3), ("sbp", 91, 2), ("sbp", 100, 2), ("sbp", 101, 1),
    ("sbp", 110, 1), ("sbp", 111, 0), ("sbp", 219, 0), ("sbp", 220, 3), ("sbp", 280, 3),
    # pulse: <=40:3, 41-50:1, 51-90:0, 91-110:1, 111-130:2, >=131:3
    ("heart_rate", 20, 3), ("heart_rate", 40, 3), ("heart_rate", 41, 1), ("heart_rate", 50, 1),
    ("heart_rate", 51, 0), ("heart_rate", 90, 0), ("heart_rate", 91, 1), ("heart_rate", 110, 1),
    ("heart_rate", 111, 2), ("heart_rate", 130, 2), ("heart_rate", 131, 3),
    ("heart_rate", 200, 3),
    # consciousness: GCS 15 alert, < 15 new confusion / CVPU -> 3
    ("gcs", 15, 0), ("gcs", 14, 3), ("gcs", 3, 3),
    # temperature: <=35.0:3, 35.1-36.0:1, 36.1-38.0:0, 38.1-39.0:1, >=39.1:2
    ("temperature", 30.0, 3), ("temperature", 35.0, 3), ("temperature", 35.1, 1),
    ("temperature", 36.0, 1), ("temperature", 36.1, 0), ("temperature", 38.0, 0),
    ("temperature", 38.1, 1), ("temperature", 39.0, 1), ("temperature", 39.1, 2),
    ("temperature", 42.0, 2),
]

# Values between the chart's printed numbers: rounded half up to the chart's resolution.
BETWEEN = [
    ("resp_rate", 8.49, 3), ("resp_rate", 8.5, 1), ("resp_rate", 20.4, 0), ("resp_rate", 20.5, 2),
    ("spo2", 91.5, 2), ("spo2", 95.49, 1), ("spo2", 95.5, 0),
    ("sbp", 90.4, 3), ("sbp", 90.5, 2), ("sbp", 110.5, 0), ("sbp", 219.5, 3),
    ("heart_rate", 40.5, 1), ("heart_rate", 90.49, 0), ("heart_rate", 90.5, 1),
    ("heart_rate", 130.5, 3),
    ("temperature", 35.04, 3), ("temperature", 35.05, 1), ("temperature", 36.05, 0),
    ("temperature", 38.04, 0), ("temperature", 38.05, 1), ("temperature", 39.05, 2),
    ("gcs", 14.5, 0), ("gcs", 14.49, 3),
    ("fio2", 0.2100001, 0), ("fio2", 0.214, 0), ("fio2", 0.215, 2),
]


@pytest.mark.parametrize(("name", "value", "points"), EDGES + BETWEEN)
def test_news2_band_edges(name, value, points):
    score, parts = news2({name: value})
    assert parts[name] == points
    assert score == points
    assert all(p == 0 for k, p in parts.items() if k != name)


def test_news2_healthy_adult_scores_zero():
    latest = {"resp_rate": 16, "spo2": 98, "fio2": 0.21, "sbp": 125, "heart_rate": 72,
              "gcs": 15, "temperature": 36.8}
    assert news2(latest) == (0, dict.fromkeys(NEWS2_PARAMETERS, 0))
    assert news2_missing(latest) == ()


def test_news2_sums_parts_of_a_sick_patient():
    latest = {"resp_rate": 26, "spo2": 92, "fio2": 0.4, "sbp": 95, "heart_rate": 125,
              "gcs": 13, "temperature": 39.4}
    score, parts = news2(latest)
    assert parts == {"resp_rate": 3, "spo2": 2, "fio2": 2, "sbp": 2, "heart_rate": 2, "gcs": 3,
                     "temperature": 2}
    assert score == 16


def test_news2_missing_parameters_score_zero_and_are_reported():
    latest = {"heart_rate": 135.0, "spo2": math.nan, "lactate": 9.0}
    score, parts = news2(latest)
    assert score == 3 and parts["spo2"] == 0
    assert set(news2_missing(latest)) == set(NEWS2_PARAMETERS) - {"heart_rate"}


def _obs(rows):
    return pd.DataFrame(rows, columns=["patient_id", "time_hours", "variable", "value"])


def test_news2_from_observations_uses_latest_value_up_to_cutoff():
    obs = _obs([
        ("a", 1.0, "heart_rate", 135), ("a", 5.0, "heart_rate", 80),  # latest: 0 points
        ("a", 2.0, "temperature", 39.5), ("a", 50.0, "temperature", 36.5),  # after cut-off
        ("b", 3.0, "resp_rate", 7), ("b", 3.0, "lactate", 4.0),
        ("c", 1.0, "lactate", 2.0),  # no NEWS2 parameter at all
    ])
    out = news2_from_observations(obs, cutoff_hour=48.0)
    assert list(out.index) == ["a", "b", "c"]
    assert out.loc["a", "score"] == 2  # heart rate 80 -> 0, temperature 39.5 -> 2
    assert out.loc["a", "points_heart_rate"] == 0
    assert out.loc["a", "latest_temperature"] == 39.5
    assert out.loc["b", "score"] == 3
    assert out.loc["c", "score"] == 0 and out.loc["c", "n_missing"] == 7
    assert out.loc["a", "missing"] == "resp_rate,spo2,fio2,sbp,gcs"
    assert news2_from_observations(obs).loc["a", "score"] == 0  # no cut-off: 36.5 is latest


def test_news2_from_observations_agrees_with_scalar_news2():
    rng = np.random.default_rng(0)
    rows = []
    for pid in range(30):
        for name, lo, hi in [("resp_rate", 5, 35), ("spo2", 85, 100), ("fio2", 0.21, 0.6),
                             ("sbp", 70, 230), ("heart_rate", 35, 150), ("gcs", 3, 15),
                             ("temperature", 34.5, 40)]:
            if rng.random() < 0.8:
                rows.append((f"p{pid}", float(rng.uniform(0, 48)), name,
                             float(np.round(rng.uniform(lo, hi), 1))))
    obs = _obs(rows)
    out = news2_from_observations(obs)
    for pid, row in out.iterrows():
        latest = {p: row[f"latest_{p}"] for p in NEWS2_PARAMETERS}
        assert news2(latest)[0] == row["score"], pid


def test_news2_from_observations_names_missing_columns():
    with pytest.raises(ValueError, match="time_hours"):
        news2_from_observations(pd.DataFrame({"patient_id": ["a"], "variable": ["spo2"],
                                              "value": [90.0]}))
