"""Log privacy of a real server process: what uvicorn and the app write to stdout/stderr
over a full request cycle holds no API key, patient id or observation value.

tests/app/test_logging.py checks the app's own log records in-process (including a 500
whose exception message quotes patient data); this runs the real thing: `python -m app`,
and uvicorn's CLI with its access log switched on at DEBUG — what an operator might run —
with the secrets also in query strings and paths, where an access log would print them.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from benchmarks.soak import serve
from tests.app.support import (
    ADMIN,
    ADMIN_KEY,
    USER,
    USER_KEY,
    make_checkpoint,
    request_body,
    without_clock_fields,
)

pytestmark = pytest.mark.slow

PATIENT = "PATIENT-5b1e77"
OTHER = "MRN-0042917"
WRONG_KEY = "wrong-key-c0ffee"
VALUES = ["187.3", "41.7", "38.47", "993.1", "7.77", "3.141"]
SECRETS = [PATIENT, OTHER, USER_KEY, ADMIN_KEY, WRONG_KEY, *VALUES]

ARGVS = {
    "python -m app": ["-m", "app"],
    "uvicorn --access-log, debug": ["-m", "uvicorn", "app.main:create_app", "--factory",
                                    "--host", "127.0.0.1", "--port", "{port}", "--access-log",
                                    "--log-level", "debug"],
}


def _cycle(c: httpx.Client, model_dir: Path) -> int:
    """A full request cycle; returns the number of HTTP requests made."""
    obs = [{"time": 0.5, "variable": "heart_rate", "value": 187.3},   # atypical: a warning
           {"time": 1.5, "variable": "temperature", "value": 38.47},
           {"time": 2.0, "variable": "resp_rate", "value": 41.7},
           {"time": 2.5, "variable": "lactate", "value": 7.77}]
    body = request_body(patient_id=PATIENT, observations=obs, static={"age": 3.141})
    q = {"patient_id": PATIENT, "value": "187.3"}
    calls = [
        (c.post("/v1/predict", json=body, headers=USER, params=q), 200),
        (c.post("/v1/predict/batch", json={"patients": [body, request_body(
            patient_id=OTHER)]}, headers=USER, params=q), 200),
        (c.post("/v1/predict", json=request_body(patient_id=PATIENT, observations=[
            {"time": 1.0, "variable": "heart_rate", "value": 993.1}]), headers=USER), 422),
        (c.post("/v1/predict/batch", json={"patients": [body, request_body(
            patient_id=OTHER, observations=[{"time": 1.0, "variable": "heart_rate",
                                             "value": 993.1}])]}, headers=USER), 422),
        (c.post("/v1/predict", content=json.dumps(body).replace(
            '"value": 187.3', '"value": 187.3, "value": 41.7'), headers={
            **USER, "Content-Type": "application/json"}), 422),
        (c.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {WRONG_KEY}"}),
         401),
        (c.post("/v1/predict", json=body, headers={"Authorization": f"Token {USER_KEY}"}),
         401),
        (c.post("/v1/models/reload", headers=USER), 403),
        (c.get(f"/v1/models/{PATIENT}", headers=USER, params=q), 404),
        (c.post("/v1/predict", json=request_body(patient_id=PATIENT, model=OTHER),
                headers=USER), 404),
        (c.post("/v1/predict", content=json.dumps(request_body(patient_id=PATIENT, observations=[
            {"time": i * 1e-3, "variable": "heart_rate", "value": 187.3}
            for i in range(3000)])), headers={**USER, "Content-Type": "application/json"}),
         413),
    ]
    make_checkpoint(model_dir, seed=21)
    calls.append((c.post("/v1/models/reload", headers=ADMIN, params=q), 200))
    calls.append((c.post("/v1/predict", json=body, headers=ADMIN), 200))
    calls.append((c.get("/v1/models", headers=USER), 200))
    for response, status in calls:
        assert response.status_code == status, (status, response.text[:300])
    return len(calls)


@pytest.mark.parametrize("how", list(ARGVS))
def test_server_logs_of_a_full_request_cycle_hold_no_keys_ids_or_values(
        tmp_path: Path, how: str) -> None:
    model_dir = tmp_path / "models"
    make_checkpoint(model_dir)
    log_path = tmp_path / "server.log"
    with serve(model_dir, log_path, argv=ARGVS[how], env={"VITALCAST_LOG_LEVEL": "DEBUG"}
               ) as server, httpx.Client(base_url=server.base_url, timeout=30) as c:
        n = _cycle(c, model_dir)
    log = log_path.read_text()
    searched = without_clock_fields(log)
    for secret in SECRETS:
        assert secret not in searched, f"{secret!r} in the server log:\n{log[-3000:]}"
    # not vacuous: the cycle was logged, one structured line per request, routes as templates
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    requests = [x for x in lines if x.get("msg") == "request" and x["route"] != "/healthz"]
    assert len(requests) == n, log[-3000:]
    assert {x["status"] for x in requests} == {200, 401, 403, 404, 413, 422}
    assert "/v1/models/{name}" in {x["route"] for x in requests}
    assert any(x.get("msg") == "models loaded" for x in lines)
    # uvicorn's own loggers were captured too, but its access line — which would print the
    # raw path and query — stays off even when the command line asks for it
    assert "Application startup complete" in log
    assert 'HTTP/1.1"' not in log
    if how == "python -m app":  # every line a JSON object, uvicorn's first ones included
        plain = [x for x in log.splitlines() if x.strip() and not x.startswith("{")]
        assert not plain, plain[:5]
        assert any(x.get("msg", "").startswith("Started server process") for x in lines)
