"""End to end: `python -m app` as a real uvicorn process on 127.0.0.1, driven over httpx."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.support import ADMIN, ADMIN_KEY, USER, USER_KEY, make_checkpoint, request_body

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path, Path]]:
    model_dir = tmp_path_factory.mktemp("served")  # empty: the server starts unready
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    port = free_port()
    env = {**os.environ, "VITALCAST_MODEL_DIR": str(model_dir),
           "VITALCAST_API_KEYS": USER_KEY, "VITALCAST_ADMIN_KEYS": ADMIN_KEY,
           "VITALCAST_PORT": str(port), "VITALCAST_MAX_BODY_BYTES": "1048576"}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.2)
                yield client, model_dir, log_path
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_served_app_end_to_end(server: tuple[httpx.Client, Path, Path]) -> None:
    client, model_dir, log_path = server
    # no model yet: not ready, predictions 503, liveness fine
    assert client.get("/readyz").status_code == 503
    assert client.post("/v1/predict", json=request_body(), headers=USER).status_code == 503

    first = make_checkpoint(model_dir).name
    assert client.post("/v1/models/reload", headers=USER).status_code == 403
    r = client.post("/v1/models/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["models"][0]["version"] == first
    assert client.get("/readyz").status_code == 200

    # single, hours
    out = client.post("/v1/predict", json=request_body(), headers=USER).json()
    assert out["model"]["version"] == first and 0 < out["risk"]["probability"] < 1
    bins = out["explanation"]["attention"]
    assert bins[0]["start"] == 0.0 and bins[-1]["end"] == 6.0
    assert math.isclose(sum(b["weight"] for b in bins), 1.0, abs_tol=1e-9)

    # single, ISO: bins in the request's offset
    iso = request_body(observations=[
        {"time": "2026-03-01T22:10:00-03:00", "variable": "heart_rate", "value": 120},
        {"time": "2026-03-02T01:40:00-03:00", "variable": "lactate", "value": 4.1}])
    bins = client.post("/v1/predict", json=iso, headers=USER).json()["explanation"]["attention"]
    assert bins[0]["start"] == "2026-03-01T22:10:00-03:00"
    assert bins[-1]["end"] == "2026-03-02T02:10:00-03:00" and len(bins) == 4

    # batch, in order
    batch = {"patients": [request_body(patient_id="a"), iso, request_body(patient_id="c")]}
    results = client.post("/v1/predict/batch", json=batch, headers=USER).json()["results"]
    assert [x["patient_id"] for x in results] == ["a", "opaque-123", "c"]

    # auth and limits over real HTTP
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    big = json.dumps(request_body(observations=[
        {"time": 0.01 * i, "variable": "heart_rate", "value": 80} for i in range(25000)]))
    r = client.post("/v1/predict", content=big, headers={**USER,
                                                          "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["kind"] == "body_too_large"

    # a new version is picked up; a corrupt newer one leaves it serving
    second = make_checkpoint(model_dir, seed=9).name
    client.post("/v1/models/reload", headers=ADMIN)
    assert client.get("/v1/models/default", headers=USER).json()["version"] == second
    bad = make_checkpoint(model_dir, seed=10)
    (bad / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    r = client.post("/v1/models/reload", headers=ADMIN).json()
    assert r["models"][0]["version"] == second and r["errors"][0]["version"] == bad.name
    out = client.post("/v1/predict", json=request_body(), headers=USER).json()
    assert out["model"]["version"] == second

    metrics = client.get("/metrics").text
    assert "vitalcast_predictions_total" in metrics
    log = log_path.read_text()
    assert '"route":"/v1/predict"' in log and "opaque-123" not in log and USER_KEY not in log


def test_event_loop_answers_while_a_batch_is_scored(
        server: tuple[httpx.Client, Path, Path]) -> None:
    """Scoring runs off the event loop: health probes answer fast while batches are scored.

    A worker keeps the server busy with batch after batch for the whole probing window, so
    the test does not depend on how fast one batch is on the machine that runs it.
    """
    client, model_dir, _ = server
    if not list(model_dir.glob("default/*")):
        make_checkpoint(model_dir)
        client.post("/v1/models/reload", headers=ADMIN)
    stop = threading.Event()
    batches: list[tuple[int, float]] = []

    def new_batch(n: int) -> dict[str, object]:
        """300 series no earlier batch sent: the prediction cache cannot answer them, so
        every batch runs the network (a repeated batch costs little more than its parsing)."""
        patients = []
        for i in range(300):
            body = request_body(patient_id=str(i))
            rows = [dict(row) for row in body["observations"]]  # type: ignore[attr-defined]
            rows[0]["value"] = 60 + (n * 300 + i) * 1e-4  # heart rate, unique per patient
            patients.append({**body, "observations": rows})
        return {"patients": patients}

    def score() -> None:
        with httpx.Client(base_url=client.base_url, timeout=120) as own:
            while not stop.is_set():
                batch = new_batch(len(batches))
                start = time.perf_counter()
                r = own.post("/v1/predict/batch", json=batch, headers=USER)
                batches.append((r.status_code, time.perf_counter() - start))

    worker = threading.Thread(target=score)
    worker.start()
    probes: list[float] = []
    try:
        time.sleep(0.2)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or len(batches) < 2:
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            probes.append(time.perf_counter() - start)
            time.sleep(0.02)
    finally:
        stop.set()
        worker.join()
    assert {status for status, _ in batches} == {200}
    batch_s = sorted(s for _, s in batches)[len(batches) // 2]
    probe_s = sorted(probes)[len(probes) // 2]
    assert probe_s < batch_s / 3, (probe_s, batch_s, len(probes), len(batches))
