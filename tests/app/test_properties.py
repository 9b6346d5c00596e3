"""Property test on the request schema: whatever a client sends, a 2xx or a 4xx, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.catalogue import CATALOGUE
from tests.app.support import USER

names = st.sampled_from(sorted(CATALOGUE)) | st.text(max_size=12)
numbers = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**30, 10**30)
           | st.floats(min_value=0, max_value=100))
iso = st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
times = numbers | iso | st.text(max_size=20) | st.booleans() | st.none()
observation = st.fixed_dictionaries(
    {"time": times, "variable": names, "value": numbers | st.text(max_size=5) | st.none()},
    optional={"extra": st.integers()},
)
static = st.fixed_dictionaries({}, optional={
    "age": numbers, "sex": st.sampled_from(["female", "male", "F", ""]), "weight": numbers,
    "height": numbers, "bmi": numbers})
request = st.fixed_dictionaries(
    {"observations": st.lists(observation, max_size=6)},
    optional={"patient_id": st.text(max_size=10) | st.integers(), "model": st.sampled_from(
        ["default", "other", "nope", ""]), "static": static | st.none(),
        "admitted_at": iso | numbers | st.none()},
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10)


def post(client: TestClient, path: str, body: Any) -> int:
    # json.dumps writes NaN/Infinity literals, as a careless client would
    r = client.post(path, content=json.dumps(body), headers={**USER, "Content-Type":
                                                             "application/json"})
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert r.json()["error"]["message"]
    return r.status_code


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(body=request)
def test_any_generated_request_gets_2xx_or_4xx(client: TestClient, body: dict) -> None:
    post(client, "/v1/predict", body)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(patients=st.lists(request, min_size=1, max_size=3))
def test_any_generated_batch_gets_2xx_or_4xx(client: TestClient, patients: list) -> None:
    post(client, "/v1/predict/batch", {"patients": patients})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_any_json_body_gets_4xx(client: TestClient, body: Any) -> None:
    assert post(client, "/v1/predict", body) >= 400
