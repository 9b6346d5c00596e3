"""The registry: newest version per name, atomic reload, corrupt checkpoints skipped."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import ModelRegistry
from app.schemas import PredictRequest
from app.service import predict, prepare
from tests.app.support import ADMIN, USER, make_checkpoint, request_body, settings_for


def corrupt(version_dir: Path) -> None:
    weights = version_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def test_readyz_is_503_with_an_empty_model_dir(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["kind"] == "no_model"
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.post("/v1/predict", json=request_body(), headers=USER)
        assert r.status_code == 503 and r.json()["error"]["kind"] == "no_model"


def test_readyz_turns_ready_once_a_reload_finds_a_model(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as c:
        assert c.get("/readyz").status_code == 503
        version = make_checkpoint(tmp_path).name
        assert c.post("/v1/models/reload", headers=ADMIN).status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["models"] == [f"default/{version}"]


def test_reload_picks_up_a_new_version_and_models_shows_it(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path).name
    with TestClient(create_app(settings_for(tmp_path))) as c:
        assert c.get("/v1/models/default", headers=USER).json()["version"] == first
        second = make_checkpoint(tmp_path, seed=5).name
        assert second > first
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200
        assert [(m["name"], m["version"]) for m in r.json()["models"]] == [("default", second)]
        listed = c.get("/v1/models", headers=USER).json()
        assert listed["models"][0]["version"] == second
        assert listed["models"][0]["versions"] == [first, second]
        assert listed["errors"] == []
        out = c.post("/v1/predict", json=request_body(), headers=USER).json()
        assert out["model"]["version"] == second


def test_corrupt_checkpoint_on_reload_leaves_the_old_model_serving(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path).name
    with TestClient(create_app(settings_for(tmp_path))) as c:
        before = c.post("/v1/predict", json=request_body(), headers=USER).json()
        bad = make_checkpoint(tmp_path, seed=5)
        corrupt(bad)
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200
        body = r.json()
        assert [m["version"] for m in body["models"]] == [first]
        assert body["errors"][0]["name"] == "default"
        assert body["errors"][0]["version"] == bad.name
        assert "model.safetensors" in body["errors"][0]["message"]
        assert str(tmp_path) not in body["errors"][0]["message"]  # no server paths
        after = c.post("/v1/predict", json=request_body(), headers=USER).json()
        assert after == before
        assert "vitalcast_model_load_failures_total 1.0" in c.get("/metrics").text


def test_startup_falls_back_to_the_newest_version_that_loads(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path).name
    (tmp_path / "default" / make_checkpoint(tmp_path, seed=2).name / "model.json").write_text("{")
    with TestClient(create_app(settings_for(tmp_path))) as c:
        listed = c.get("/v1/models", headers=USER).json()
        assert listed["models"][0]["version"] == good
        assert "not valid JSON" in listed["errors"][0]["message"]


def test_reload_adds_and_drops_names(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        make_checkpoint(tmp_path, "extra", arch="elman")
        names = [m["name"] for m in c.post("/v1/models/reload", headers=ADMIN).json()["models"]]
        assert names == ["default", "extra"]
        r = c.post("/v1/predict", json=request_body(model="extra"), headers=USER)
        assert r.json()["model"]["architecture"] == "elman"


def test_a_model_that_failed_to_load_is_a_503_saying_why_not_an_unknown_model(
        tmp_path: Path) -> None:
    """/v1 agrees with /v2 readiness and GET /v1/models: the model exists, it did not load,
    and the message says which file is wrong (no stack trace, no server path)."""
    make_checkpoint(tmp_path)
    corrupt(make_checkpoint(tmp_path, "broken"))
    with TestClient(create_app(settings_for(tmp_path))) as c:
        assert c.get("/v2/models/broken/ready", headers=USER).status_code == 503
        for r in (c.post("/v1/predict", json=request_body(model="broken"), headers=USER),
                  c.get("/v1/models/broken", headers=USER)):
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["kind"] == "model_unavailable"
            assert error["message"].startswith("model 'broken' failed to load: broken/")
            assert "model.safetensors" in error["message"] and "/v1/models/reload" in \
                error["message"]
            assert "Traceback" not in error["message"] and str(tmp_path) not in error["message"]
        r = c.get("/v2/models/broken", headers=USER)
        assert r.status_code == 503 and "failed to load" in r.json()["error"]
        batch = {"patients": [request_body(), request_body(model="broken")]}
        r = c.post("/v1/predict/batch", json=batch, headers=USER)
        assert r.status_code == 503 and r.json()["error"]["index"] == 1
        assert c.post("/v1/predict", json=request_body(), headers=USER).status_code == 200


def test_unknown_model_info_is_404(client: TestClient) -> None:
    r = client.get("/v1/models/nope", headers=USER)
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]["message"]


def test_a_request_finishes_on_the_model_it_started_with(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path).name
    registry = ModelRegistry(tmp_path, "default")
    registry.load()
    job = prepare(PredictRequest.model_validate(request_body()), registry.get(None), 100)
    second = make_checkpoint(tmp_path, seed=3).name
    registry.load()  # swapped while the request is "in flight"
    assert registry.get(None).version == second
    (response,) = predict([job])
    assert response.model.version == first


def test_non_risk_checkpoint_is_refused_for_prediction(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    make_checkpoint(tmp_path, "fc", task="forecast")
    with TestClient(create_app(settings_for(tmp_path))) as c:
        r = c.post("/v1/predict", json=request_body(model="fc"), headers=USER)
        assert r.status_code == 422 and "is a forecast model" in r.json()["error"]["message"]
