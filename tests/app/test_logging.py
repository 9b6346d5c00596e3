"""Logs: structured JSON lines with request id, route, status and latency, and never a
patient value, a patient id or an API key — not even when a request fails."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import app.service
from app.main import create_app
from app.observability import JsonFormatter
from tests.app.support import (
    ADMIN,
    ADMIN_KEY,
    USER,
    USER_KEY,
    request_body,
    settings_for,
    without_clock_fields,
)

PATIENT = "PATIENT-7f3a9c"
SECRET_VALUES = ["187.3", "993.1", "41.7", "38.47"]
WRONG_KEY = "wrong-key-5e5e5e"


def test_a_full_request_cycle_logs_no_patient_data_or_keys(
        shared_model_dir: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    keep = Keep()
    keep.setFormatter(JsonFormatter())
    # No prediction cache: the request made to fail repeats an earlier one.
    with TestClient(create_app(settings_for(shared_model_dir, cache_entries=0))) as c:
        for name in ("vitalcast", "uvicorn", "uvicorn.error", ""):
            logging.getLogger(name).addHandler(keep)
        try:
            obs = [{"time": 0.5, "variable": "heart_rate", "value": 187.3},   # atypical
                   {"time": 1.5, "variable": "temperature", "value": 38.47},
                   {"time": 2.0, "variable": "resp_rate", "value": 41.7}]     # atypical
            body = request_body(patient_id=PATIENT, observations=obs)
            ok = c.post("/v1/predict", json=body, headers=USER)
            assert ok.status_code == 200 and ok.json()["warnings"]
            bad = request_body(patient_id=PATIENT, observations=[
                {"time": 1.0, "variable": "heart_rate", "value": 993.1}])
            assert c.post("/v1/predict", json=bad, headers=USER).status_code == 422
            batch = {"patients": [body, bad]}
            assert c.post("/v1/predict/batch", json=batch, headers=USER).status_code == 422
            assert c.post("/v1/predict", json=body,
                          headers={"Authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
            assert c.post("/v1/models/reload", headers=ADMIN).status_code == 200

            def explode(*args: object, **kwargs: object) -> None:
                raise RuntimeError(f"boom for {PATIENT} at 187.3")

            monkeypatch.setattr(app.service, "score_tensors", explode)
            r = c.post("/v1/predict", json=body, headers=USER,
                       params={"patient": PATIENT})
            assert r.status_code == 500
            assert r.json()["error"]["kind"] == "internal"
            assert PATIENT not in r.text
        finally:
            for name in ("vitalcast", "uvicorn", "uvicorn.error", ""):
                logging.getLogger(name).removeHandler(keep)

    out, err = capfd.readouterr()
    text = without_clock_fields("\n".join(captured) + "\n" + out + err)
    for secret in [PATIENT, USER_KEY, ADMIN_KEY, WRONG_KEY, *SECRET_VALUES]:
        assert secret not in text, secret
    lines = [json.loads(line) for line in captured]
    requests = [x for x in lines if x["msg"] == "request"]
    assert [x["status"] for x in requests] == [200, 422, 422, 401, 200, 500]
    # an operator sees why a request failed, by kind, not by message
    assert [x.get("error_kind") for x in requests] == [
        None, "invalid_request", "invalid_request", "unauthorized", None, "internal"]
    assert all({"request_id", "route", "status", "latency_ms", "ts", "level"} <= set(x)
               for x in requests)
    assert requests[0]["route"] == "/v1/predict"
    assert len({x["request_id"] for x in requests}) == len(requests)
    crash = next(x for x in lines if x["msg"] == "unhandled error")
    assert crash["exception"] == "RuntimeError" and crash["request_id"] == requests[-1][
        "request_id"]


def test_request_id_is_echoed_and_a_safe_incoming_one_kept(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-ID": "no spaces {allowed}"})
    assert len(r.headers["x-request-id"]) == 32


def test_metrics_count_requests_predictions_and_errors(client: TestClient) -> None:
    client.post("/v1/predict", json=request_body(), headers=USER)
    client.post("/v1/predict", json=request_body(model="nope"), headers=USER)
    text = client.get("/metrics").text
    assert 'vitalcast_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'vitalcast_request_latency_seconds_bucket{le="0.005",route="/v1/predict"}' in text
    assert 'vitalcast_predictions_total{model="default",version="' in text
    assert 'vitalcast_errors_total{kind="unknown_model"}' in text
