"""The benchmark-only route: absent by default, parse-and-validate only when switched on."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.support import USER, request_body, settings_for


def test_bench_route_is_off_by_default(client: TestClient) -> None:
    assert client.post("/bench/parse", json=request_body(), headers=USER).status_code == 404
    assert "/bench/parse" not in client.get("/openapi.json").json()["paths"]


def test_bench_route_validates_like_predict(shared_model_dir: Path) -> None:
    app = create_app(settings_for(shared_model_dir, benchmark_routes=True))
    with TestClient(app) as c:
        ok = c.post("/bench/parse", json=request_body(), headers=USER)
        assert ok.status_code == 200 and ok.json() == {"ok": True, "observations": 6}
        bad = request_body(observations=[{"time": 1, "variable": "heart_rate", "value": 900}])
        assert c.post("/bench/parse", json=bad, headers=USER).status_code == 422
        assert c.post("/bench/parse", json=request_body()).status_code == 401
        assert "/bench/parse" not in c.get("/openapi.json").json()["paths"]
