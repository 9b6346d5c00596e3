"""Bad input: every class gets its 4xx and a message naming the problem, before torch runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import app.schemas
from app.main import create_app
from app.schemas import Observation, ObservationRows, PredictRequest, _plain_columns
from tests.app.support import USER, request_body, settings_for


def obs(time: object = 1.0, variable: str = "heart_rate", value: object = 90) -> dict:
    return {"time": time, "variable": variable, "value": value}


def error_of(client: TestClient, body: object, status: int = 422,
             path: str = "/v1/predict") -> dict:
    if isinstance(body, str | bytes):
        r = client.post(path, content=body, headers={**USER, "Content-Type": "application/json"})
    else:
        r = client.post(path, json=body, headers=USER)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"kind", "message"}
    return error


CASES = [
    ("unknown variable", [obs(variable="heartrate")],
     ["observations[0].variable", "unknown variable 'heartrate'"]),
    ("impossible value", [obs(variable="temperature", value=98.6)],
     ["observations[0]", "temperature 98.6 is impossible", "°C", "25-45"]),
    ("negative hours", [obs(time=-0.5)], ["observations[0].time", "-0.5 is negative"]),
    ("mixed time kinds", [obs(time=1.0), obs(time="2026-01-01T00:00:00+00:00")],
     ["mix hours and ISO-8601"]),
    ("naive date-time", [obs(time="2026-01-01T00:00:00")], ["has no UTC offset"]),
    ("date alone", [obs(time="2026-01-01")],
     ["observations[0].time", "'2026-01-01' is a date alone", "date-time with UTC offset"]),
    ("not a time", [obs(time="yesterday")], ["'yesterday' is neither hours"]),
    ("numeric string time", [obs(time="2.5")], ["neither hours"]),
    ("boolean time", [obs(time=True)], ["observations[0].time", "must be hours"]),
    ("string value", [obs(value="90")], ["observations[0].value", "must be a number"]),
    ("empty series", [], ["observations: empty; send at least one observation"]),
    ("static as observation", [obs(variable="age", value=70)], ["static descriptor"]),
    ("absurd hours", [obs(time=1e12)], ["beyond the"]),
]


@pytest.mark.parametrize(("case", "observations", "needles"), CASES, ids=[c[0] for c in CASES])
def test_bad_observations_get_422_naming_the_problem(client: TestClient, case: str,
                                                     observations: list, needles: list) -> None:
    error = error_of(client, request_body(observations=observations))
    assert error["kind"] == "invalid_request"
    for needle in needles:
        assert needle in error["message"], (case, error["message"])


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_get_422(client: TestClient, literal: str) -> None:
    body = json.dumps(request_body(observations=[obs(value=0)])).replace(
        '"value": 0', f'"value": {literal}')
    error = error_of(client, body)
    assert "observations[0].value" in error["message"]
    assert "finite" in error["message"]


def test_nan_time_gets_422(client: TestClient) -> None:
    body = json.dumps(request_body(observations=[obs(time=0)])).replace('"time": 0', '"time": NaN')
    assert "finite" in error_of(client, body)["message"]


def test_iso_time_before_admission_gets_422(client: TestClient) -> None:
    error = error_of(client, request_body(admitted_at="2026-01-01T10:00:00+00:00",
                                          observations=[obs(time="2026-01-01T09:00:00+00:00")]))
    assert "before admitted_at" in error["message"]


def test_admitted_at_with_hours_gets_422(client: TestClient) -> None:
    error = error_of(client, request_body(admitted_at="2026-01-01T10:00:00+00:00"))
    assert "admitted_at" in error["message"]


@pytest.mark.parametrize(("static", "needle"), [
    ({"sex": "f"}, "static.sex: Input should be 'female' or 'male'"),
    ({"age": 300}, "age 300 is impossible"),
    ({"bmi": 22}, "static.bmi: unknown field"),
])
def test_bad_static_descriptors_get_422(client: TestClient, static: dict, needle: str) -> None:
    assert needle in error_of(client, request_body(static=static))["message"]


def test_atypical_static_is_a_warning_not_an_error(client: TestClient) -> None:
    r = client.post("/v1/predict", json=request_body(static={"age": 110}), headers=USER)
    assert r.status_code == 200
    assert any("age 110" in w for w in r.json()["warnings"])


def test_unknown_top_level_field_gets_422(client: TestClient) -> None:
    assert "admited_at: unknown field" in error_of(client, request_body(admited_at="x"))["message"]


def test_missing_observations_gets_422(client: TestClient) -> None:
    body = request_body()
    del body["observations"]
    assert "observations: required field is missing" in error_of(client, body)["message"]


def test_malformed_json_gets_422(client: TestClient) -> None:
    message = error_of(client, '{"observations": [')["message"]
    assert message.startswith("body: not valid JSON (") and "body is" not in message


def test_an_unknown_variable_gets_the_catalogue_name_and_the_models_variables(
        client: TestClient) -> None:
    """PhysioNet's HR is heart_rate; the list is the model's variables, not the catalogue's."""
    message = error_of(client, request_body(observations=[obs(variable="HR")]))["message"]
    assert message.startswith("observations[0].variable: unknown variable 'HR': the catalogue "
                              "calls it 'heart_rate'; model 'default' uses: heart_rate, "
                              "resp_rate, spo2")
    assert "albumin" not in message  # in the catalogue, not read by the model
    message = error_of(client, request_body(observations=[obs(variable="pulse")]))["message"]
    assert message.startswith("observations[0].variable: unknown variable 'pulse'; model "
                              "'default' uses: heart_rate")
    batch = {"patients": [request_body(), request_body(
        model="other", observations=[obs(variable="Age", value=70)])]}
    error = error_of(client, batch, path="/v1/predict/batch")
    assert error["index"] == 1 and error["message"].startswith(
        "patients[1].observations[0].variable: unknown variable 'Age': the catalogue calls it "
        "'age', a static descriptor sent in 'static'; model 'other' uses: heart_rate")


def test_an_empty_batch_or_patient_says_what_to_send(client: TestClient) -> None:
    assert error_of(client, {"patients": []}, path="/v1/predict/batch")["message"] == \
        "patients: empty; send at least one patient"
    error = error_of(client, {"patients": [request_body(observations=[])]},
                     path="/v1/predict/batch")
    assert error["message"] == "patients[0].observations: empty; send at least one observation"
    error = error_of(client, request_body(what_if=[]))
    assert error["message"] == "what_if: empty; send at least one plan (or leave what_if out)"


def test_non_object_body_gets_422(client: TestClient) -> None:
    assert error_of(client, [1, 2, 3])["kind"] == "invalid_request"


def test_too_many_observations_get_422(shared_model_dir) -> None:
    with TestClient(create_app(settings_for(shared_model_dir, max_observations=3))) as c:
        ok = c.post("/v1/predict", json=request_body(observations=[obs()] * 3), headers=USER)
        assert ok.status_code == 200
        error = error_of(c, request_body(observations=[obs()] * 4))
        assert "4 observations exceed the limit of 3" in error["message"]


def test_no_variable_the_model_uses_gets_422(client: TestClient) -> None:
    error = error_of(client, request_body(observations=[obs(variable="antibiotics", value=1)]))
    assert error["message"].startswith(
        "observations: model 'default' uses none of the variables sent (antibiotics); send at "
        "least one of: heart_rate, resp_rate")


def test_unknown_model_gets_404(client: TestClient) -> None:
    error = error_of(client, request_body(model="nope"), status=404)
    assert error["kind"] == "unknown_model"
    assert "unknown model 'nope'" in error["message"]


def test_invalid_patient_in_a_batch_is_named_by_index(client: TestClient) -> None:
    patients = [request_body(), request_body(), request_body(observations=[obs(value=-5)])]
    error = error_of(client, {"patients": patients}, path="/v1/predict/batch")
    assert error["index"] == 2
    assert error["message"].startswith("patients[2].observations[0]")
    assert "heart_rate -5 is impossible" in error["message"]


def test_unknown_model_in_a_batch_is_named_by_index(client: TestClient) -> None:
    patients = [request_body(), request_body(model="nope")]
    error = error_of(client, {"patients": patients}, status=404, path="/v1/predict/batch")
    assert error["index"] == 1 and error["message"].startswith("patients[1]: unknown model")


def test_empty_batch_gets_422(client: TestClient) -> None:
    assert "patients" in error_of(client, {"patients": []}, path="/v1/predict/batch")["message"]


def test_batch_over_the_limit_gets_422(shared_model_dir) -> None:
    with TestClient(create_app(settings_for(shared_model_dir, max_batch=2))) as c:
        error = error_of(c, {"patients": [request_body()] * 3}, path="/v1/predict/batch")
        assert "3 patients exceed the limit of 2" in error["message"]


def test_unknown_route_gets_an_error_body(client: TestClient) -> None:
    r = client.get("/v2/nothing", headers=USER)
    assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"


ROW_TIMES = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                      st.booleans(), st.just("2026-11-22T08:30:00+01:00"), st.none())
ROW_VARIABLES = st.one_of(st.sampled_from(["heart_rate", "lactate", "antibiotics", "age",
                                           "heart_rat", ""]), st.integers(), st.none())
ROW_VALUES = st.one_of(st.integers(-10, 10**4), st.floats(allow_nan=True, allow_infinity=True),
                       st.booleans(), st.just("118"), st.none())


@settings(max_examples=500, deadline=None)
@given(st.lists(st.fixed_dictionaries({"time": ROW_TIMES, "variable": ROW_VARIABLES,
                                       "value": ROW_VALUES}), min_size=1, max_size=4))
def test_plain_rows_skip_the_validators_with_the_same_result(rows: list[dict[str, Any]]) -> None:
    """The fast path builds exactly what the validators would, and only when they accept."""
    plain = _plain_columns(rows)
    if plain is None:
        return
    validated = [Observation.model_validate(row) for row in rows]
    assert plain == validated
    columns = ObservationRows.of_rows(validated)  # what scoring reads, both ways the same
    assert plain.names == columns.names and plain.variables == columns.variables
    assert plain.hours is not None and columns.hours is not None
    assert plain.hours.tolist() == columns.hours.tolist()
    assert plain.values.tolist() == columns.values.tolist()
    assert plain.code.tolist() == columns.code.tolist()
    assert [o.model_fields_set for o in plain] == [{"time", "variable", "value"}] * len(rows)
    assert [type(o.time) for o in plain] == [float] * len(rows)  # as the validators coerce


def test_a_request_of_plain_rows_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    body = request_body()
    expected = [Observation.model_validate(o) for o in body["observations"]]  # type: ignore[union-attr]

    def validator_ran(*args: object) -> None:
        raise AssertionError("the per-field validators ran")

    monkeypatch.setattr(app.schemas, "parse_time", validator_ran)  # what the time field calls
    assert PredictRequest.model_validate(body).observations == expected
    with pytest.raises(ValidationError, match="validators ran"):  # not a plain row: they run
        PredictRequest.model_validate(request_body(observations=[obs(time="1.5")]))
