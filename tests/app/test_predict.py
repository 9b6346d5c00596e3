"""POST /v1/predict and /v1/predict/batch: the response DESIGN.md promises."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app.schemas import BatchResponse, PredictResponse
from tests.app.support import USER, request_body


def predict(client: TestClient, body: dict[str, object]) -> dict:
    r = client.post("/v1/predict", json=body, headers=USER)
    assert r.status_code == 200, r.text
    return r.json()


def test_predict_returns_risk_prognosis_news2_and_explanation(client: TestClient) -> None:
    out = predict(client, request_body())
    assert out["patient_id"] == "opaque-123"
    assert out["model"]["name"] == "default"
    assert out["model"]["architecture"] == "gru" and out["model"]["bidirectional"] is False
    assert len(out["model"]["version"]) == 16 and out["model"]["version"].endswith("Z")
    assert 0.0 < out["risk"]["probability"] < 1.0
    assert out["risk"]["outcome"] == "in_hospital_death"
    assert out["prognosis"]["los_days"] >= 0.0
    assert set(out["news2"]["parts"]) == {"resp_rate", "spo2", "fio2", "sbp", "heart_rate",
                                          "gcs", "temperature"}
    assert out["news2"]["score"] == sum(out["news2"]["parts"].values())
    assert out["warnings"] == []


def test_news2_scores_the_latest_value_of_each_parameter(client: TestClient) -> None:
    body = request_body(observations=[
        {"time": 3.0, "variable": "heart_rate", "value": 80},   # latest: 0 points
        {"time": 1.0, "variable": "heart_rate", "value": 135},  # earlier: would be 3
        {"time": 1.0, "variable": "resp_rate", "value": 26},    # 3 points
    ])
    news2 = predict(client, body)["news2"]
    assert news2["parts"]["heart_rate"] == 0
    assert news2["parts"]["resp_rate"] == 3
    assert news2["score"] == 3
    assert "spo2" in news2["missing"] and "heart_rate" not in news2["missing"]


def test_patient_id_is_optional(client: TestClient) -> None:
    body = request_body()
    del body["patient_id"]
    assert predict(client, body)["patient_id"] is None


def test_same_request_gets_the_same_answer(client: TestClient) -> None:
    assert predict(client, request_body()) == predict(client, request_body())


def test_observation_order_does_not_change_the_answer(client: TestClient) -> None:
    body = request_body()
    shuffled = request_body(observations=list(reversed(body["observations"])))  # type: ignore
    a, b = predict(client, body), predict(client, shuffled)
    assert a["risk"] == b["risk"] and a["explanation"] == b["explanation"]


def test_variables_are_signed_and_sorted_by_absolute_contribution(client: TestClient) -> None:
    variables = predict(client, request_body())["explanation"]["variables"]
    sent = {o["variable"] for o in request_body()["observations"]}  # type: ignore[attr-defined]
    assert {v["variable"] for v in variables} == sent
    sizes = [abs(v["contribution"]) for v in variables]
    assert sizes == sorted(sizes, reverse=True)
    assert any(v["contribution"] != 0 for v in variables)


def test_attention_in_hours_covers_first_to_last_observed_bin(client: TestClient) -> None:
    times = [2.5, 2.7, 6.1, 9.0]
    body = request_body(observations=[
        {"time": t, "variable": "heart_rate", "value": 90 + i} for i, t in enumerate(times)])
    bins = predict(client, body)["explanation"]["attention"]
    # bins 2..9, the empty ones (3, 4, 5, 7, 8) included
    assert [(b["start"], b["end"]) for b in bins] == [(float(h), float(h + 1))
                                                      for h in range(2, 10)]
    assert math.isclose(sum(b["weight"] for b in bins), 1.0, abs_tol=1e-9)
    assert all(b["weight"] >= 0 for b in bins)
    for t in times:
        assert sum(b["start"] <= t < b["end"] for b in bins) == 1


@pytest.mark.parametrize("admitted", [None, "2026-11-22T07:00:00+01:00"])
def test_attention_in_iso_times_keeps_the_offset_of_the_first_time(
        client: TestClient, admitted: str | None) -> None:
    times = ["2026-11-22T08:30:00+01:00", "2026-11-22T09:45:00+01:00",
             "2026-11-22T10:05:00Z"]  # the last in UTC: 11:05 at +01:00
    body = request_body(observations=[
        {"time": t, "variable": "heart_rate", "value": 100} for t in times])
    if admitted:
        body["admitted_at"] = admitted
    bins = predict(client, body)["explanation"]["attention"]
    starts = [datetime.fromisoformat(b["start"]) for b in bins]
    assert all(b["start"].endswith("+01:00") and b["end"].endswith("+01:00") for b in bins)
    origin = datetime.fromisoformat(admitted or times[0])
    assert starts[0] == origin + timedelta(hours=1 if admitted else 0)
    assert all(b - a == timedelta(hours=1) for a, b in zip(starts, starts[1:]))
    assert math.isclose(sum(b["weight"] for b in bins), 1.0, abs_tol=1e-9)
    for t in map(datetime.fromisoformat, times):
        hits = [b for b in bins if datetime.fromisoformat(b["start"]) <= t
                < datetime.fromisoformat(b["end"])]
        assert len(hits) == 1


def test_iso_and_hours_requests_of_the_same_series_agree(client: TestClient) -> None:
    hours = request_body()
    base = datetime.fromisoformat("2026-01-10T12:00:00-05:00")
    iso = request_body(admitted_at=base.isoformat(), observations=[
        {**o, "time": (base + timedelta(hours=o["time"])).isoformat()}
        for o in hours["observations"]])  # type: ignore[union-attr]
    a, b = predict(client, hours), predict(client, iso)
    assert a["risk"] == b["risk"] and a["prognosis"] == b["prognosis"]
    assert [x["weight"] for x in a["explanation"]["attention"]] == \
        [x["weight"] for x in b["explanation"]["attention"]]


def test_atypical_value_is_accepted_with_a_warning(client: TestClient) -> None:
    body = request_body(observations=[{"time": 1, "variable": "heart_rate", "value": 195},
                                      {"time": 2, "variable": "heart_rate", "value": 199}])
    out = predict(client, body)
    assert out["warnings"] == [
        "heart_rate 195 /min is outside the typical range 40-180 (and 1 more such values)"]


def test_a_value_that_looks_sent_in_another_unit_is_scored_with_the_conversion_named(
        client: TestClient) -> None:
    body = request_body(observations=[{"time": 1, "variable": "heart_rate", "value": 96},
                                      {"time": 2, "variable": "glucose", "value": 15}])
    out = predict(client, body)
    assert ("glucose 15 mg/dL is outside the typical range 60-350 (in mmol/L it would be "
            "270.2 mg/dL)") in out["warnings"]


def test_each_patient_of_a_batch_gets_its_own_warnings_in_order(client: TestClient) -> None:
    """Warnings are found over the whole batch at once and worded per patient: its
    atypical rows (request order), then its atypical statics (age, weight, height), the
    variables its model ignores (sorted), and a series longer than the window."""
    rows = request_body()["observations"]
    flagged = request_body(patient_id="flagged", static={"height": 120, "age": 110,
                                                         "weight": 30}, observations=[
        *rows,  # type: ignore[list-item]
        {"time": 60.5, "variable": "troponin_t", "value": 0.01},
        {"time": 60.5, "variable": "heart_rate", "value": 195},
        {"time": 61.0, "variable": "albumin", "value": 3.0},
        {"time": 61.0, "variable": "glucose", "value": 15}])
    plain = request_body(patient_id="plain")
    statics = request_body(patient_id="statics", static={"weight": 250})
    r = client.post("/v1/predict/batch", json={"patients": [plain, flagged, statics]},
                    headers=USER)
    assert r.status_code == 200, r.text
    warnings = [result["warnings"] for result in r.json()["results"]]
    assert warnings[0] == []
    assert warnings[1] == [
        "heart_rate 195 /min is outside the typical range 40-180",
        "glucose 15 mg/dL is outside the typical range 60-350 (in mmol/L it would be "
        "270.2 mg/dL)",
        "age 110 years is outside the typical range 18-100",
        "weight 30 kg is outside the typical range 35-200",
        "height 120 cm is outside the typical range 140-210",
        "model 'default' does not use: albumin, troponin_t (ignored)",
        "the series spans more than the model's 48 h window: only hours 14-62 were scored"]
    assert warnings[2] == ["weight 250 kg is outside the typical range 35-200 (in lb it would "
                           "be 113.4 kg)"]
    assert predict(client, flagged)["warnings"] == warnings[1]  # alone, the same


def test_intervention_rows_are_accepted(client: TestClient) -> None:
    body = request_body()
    body["observations"] = [*body["observations"],  # type: ignore[misc]
                            {"time": 3.0, "variable": "antibiotics", "value": 1},
                            {"time": 3.0, "variable": "vasopressor", "value": 0.2}]
    assert predict(client, body)["risk"]["probability"] > 0


def test_a_ventilation_state_other_than_0_or_1_is_refused_in_every_body_form(
        client: TestClient) -> None:
    row = {"time": 3.0, "variable": "mech_vent", "value": 0.5}
    body = request_body()
    body["observations"] = [*body["observations"], row]  # type: ignore[misc]
    want = "mech_vent 0.5 is impossible: mech_vent is 0 (off) or 1 (on)"
    r = client.post("/v1/predict", json=body, headers=USER)
    assert r.status_code == 422 and want in r.json()["error"]["message"]
    # a batch of plain rows (the fast decoder) and the column form say the same
    r = client.post("/v1/predict/batch", json={"patients": [request_body(), body]},
                    headers=USER)
    assert r.status_code == 422 and want in r.json()["error"]["message"]
    assert r.json()["error"]["index"] == 1
    rows = body["observations"]
    columns = {k: [o[k] for o in rows] for k in ("time", "variable", "value")}  # type: ignore[attr-defined]
    r = client.post("/v1/predict", json={**body, "observations": columns}, headers=USER)
    assert r.status_code == 422 and want in r.json()["error"]["message"]
    # ventilated (1) and not (0) are fine
    row["value"] = 1
    assert predict(client, body)["risk"]["probability"] > 0


def test_variable_the_model_does_not_use_is_ignored_with_a_warning(client: TestClient) -> None:
    body = request_body()
    body["observations"] = [*body["observations"],  # type: ignore[misc]
                            {"time": 3.0, "variable": "albumin", "value": 3.0}]
    out = predict(client, body)
    assert any("does not use: albumin" in w for w in out["warnings"])


def test_a_stay_longer_than_the_window_is_scored_on_its_last_bins(client: TestClient) -> None:
    body = request_body(observations=[{"time": t, "variable": "heart_rate", "value": 90}
                                      for t in (1.0, 30.0, 70.5)])
    out = predict(client, body)
    bins = out["explanation"]["attention"]
    assert bins[-1] == {**bins[-1], "start": 70.0, "end": 71.0}
    assert len(bins) == 41  # window: bins 23-70; the first observed in it is bin 30
    assert bins[0]["start"] == 30.0
    assert any("only hours 23-71 were scored" in w for w in out["warnings"])


def test_request_can_name_a_model(client: TestClient) -> None:
    out = predict(client, request_body(model="other"))
    assert out["model"]["name"] == "other" and out["model"]["bidirectional"] is True


def test_batch_answers_every_patient_in_order(client: TestClient) -> None:
    patients = [request_body(patient_id=f"p{i}", observations=[
        {"time": 0.5 + i, "variable": "heart_rate", "value": 70 + 10 * i}]) for i in range(4)]
    patients[2]["model"] = "other"
    r = client.post("/v1/predict/batch", json={"patients": patients}, headers=USER)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["patient_id"] for x in results] == ["p0", "p1", "p2", "p3"]
    assert [x["model"]["name"] for x in results] == ["default", "default", "other", "default"]
    # batched scoring gives each patient what scoring it alone gives (up to float32 sums)
    for body, result in zip(patients, results):
        alone = predict(client, body)
        assert alone["risk"]["probability"] == pytest.approx(result["risk"]["probability"],
                                                             abs=1e-6)
        assert alone["prognosis"]["los_days"] == pytest.approx(result["prognosis"]["los_days"],
                                                               rel=1e-5)
        assert [b["start"] for b in alone["explanation"]["attention"]] == \
            [b["start"] for b in result["explanation"]["attention"]]
        assert alone["news2"] == result["news2"]


@pytest.mark.parametrize("contributions", ["true", "false"])
def test_answers_are_the_documented_response_models_json(client: TestClient,
                                                         contributions: str) -> None:
    """Answers are encoded without building the response models: their bytes must still be
    exactly what the documented models (OpenAPI) validate and write."""
    iso = request_body(patient_id="iso", admitted_at="2026-11-22T08:00:00+01:00",
                       observations=[{"time": "2026-11-22T08:30:00+01:00",
                                      "variable": "heart_rate", "value": 96},
                                     {"time": "2026-11-22T11:00:00+01:00",
                                      "variable": "creatinine", "value": 2.1}])
    atypical = request_body(patient_id=None, static=None, observations=[
        {"time": 0, "variable": "heart_rate", "value": 250},
        {"time": 1, "variable": "troponin_t", "value": 0.5}])
    params = {"contributions": contributions}
    for body in (request_body(), iso, atypical):
        r = client.post("/v1/predict", json=body, headers=USER, params=params)
        assert r.status_code == 200, r.text
        assert PredictResponse.model_validate_json(r.content).model_dump_json().encode() \
            == r.content
    r = client.post("/v1/predict/batch", json={"patients": [request_body(), iso, atypical]},
                    headers=USER, params=params)
    assert r.status_code == 200, r.text
    assert BatchResponse.model_validate_json(r.content).model_dump_json().encode() == r.content
