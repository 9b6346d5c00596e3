"""POST /v1/forecast: a forecast model's next hours of a patient's vitals, from the same
body as /v1/predict."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.schemas import ForecastResponse
from models.checkpoint import save_checkpoint
from models.features import Grid
from models.networks import ModelConfig, build_model
from tests.app.support import USER, make_checkpoint, normalizer, request_body, settings_for

TARGETS = ["heart_rate", "sbp"]
HORIZON = 4


def make_forecaster(model_dir: Path, name: str = "forecast") -> None:
    """A tiny seq2seq forecaster, untrained: its change layer starts at zero, so it
    forecasts exactly the carried-forward value of each target (models/seq2seq.py)."""
    norm = normalizer()
    torch.manual_seed(0)
    cfg = ModelConfig(arch="seq2seq", n_inputs=3 * len(norm.features),
                      n_static=norm.n_static_inputs, hidden=8, attn_dim=8, dropout=0.0,
                      horizon=HORIZON, n_targets=len(TARGETS),
                      target_index=tuple(norm.features.index(t) for t in TARGETS))
    save_checkpoint(model_dir, name, build_model(cfg), cfg, norm, Grid(1.0, 48),
                    task="forecast", extra={"targets": TARGETS, "horizon": HORIZON},
                    fingerprint="test")


@pytest.fixture(scope="module")
def fc_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("forecast-models")
    make_checkpoint(root, "default")
    make_forecaster(root)
    with TestClient(create_app(settings_for(root))) as c:
        yield c


def test_forecast_gives_each_target_for_the_hours_after_the_last_observation(
        fc_client: TestClient) -> None:
    r = fc_client.post("/v1/forecast", json=request_body(), headers=USER)
    assert r.status_code == 200, r.text
    out = ForecastResponse.model_validate(r.json()).model_dump()
    assert out["patient_id"] == "opaque-123" and out["model"]["name"] == "forecast"
    assert [s["variable"] for s in out["forecast"]] == TARGETS
    assert [s["unit"] for s in out["forecast"]] == ["/min", "mmHg"]
    for series in out["forecast"]:
        # the last observation is at 5.9 h (bin 5): the forecast covers bins 6..9
        assert [(p["start"], p["end"]) for p in series["points"]] == [
            (6.0, 7.0), (7.0, 8.0), (8.0, 9.0), (9.0, 10.0)]
    # untrained, the forecaster carries the last value forward, in the catalogue's unit
    hr, sbp = ([p["value"] for p in s["points"]] for s in out["forecast"])
    assert hr == pytest.approx([118.0] * HORIZON, abs=1e-3)
    assert sbp == pytest.approx([95.0] * HORIZON, abs=1e-3)


def test_iso_requests_get_iso_forecast_times(fc_client: TestClient) -> None:
    body = request_body(admitted_at="2026-11-20T08:00:00+01:00", observations=[
        {"time": "2026-11-20T08:30:00+01:00", "variable": "heart_rate", "value": 110},
        {"time": "2026-11-20T10:10:00+01:00", "variable": "sbp", "value": 101}])
    r = fc_client.post("/v1/forecast", json=body, headers=USER)
    assert r.status_code == 200, r.text
    first = r.json()["forecast"][0]["points"][0]
    # both targets were measured; a series without sbp gets heart_rate alone, and a warning
    body["observations"] = body["observations"][:1]  # type: ignore[index]
    out = fc_client.post("/v1/forecast", json=body, headers=USER).json()
    assert [s["variable"] for s in out["forecast"]] == ["heart_rate"]
    assert "not forecast, never measured in this series: sbp" in out["warnings"]
    assert first["start"] == "2026-11-20T11:00:00+01:00"
    assert first["end"] == "2026-11-20T12:00:00+01:00"


def test_a_model_that_does_not_forecast_or_a_plan_is_refused(fc_client: TestClient) -> None:
    r = fc_client.post("/v1/forecast", json=request_body(model="default"), headers=USER)
    assert r.status_code == 422
    assert "is a risk model; /v1/forecast needs a forecast model" in r.json()["error"]["message"]
    r = fc_client.post("/v1/forecast", json=request_body(model="nope"), headers=USER)
    assert r.status_code == 404
    plan = request_body(what_if=[{"label": "abx", "interventions": [
        {"time": 7.0, "variable": "antibiotics", "value": 1}]}])
    r = fc_client.post("/v1/forecast", json=plan, headers=USER)
    assert r.status_code == 422 and "/v1/predict" in r.json()["error"]["message"]
    assert fc_client.post("/v1/forecast", json=request_body()).status_code == 401
    # an unknown variable's hint lists the forecaster's variables, the route's default model
    r = fc_client.post("/v1/forecast", json=request_body(observations=[
        {"time": 1, "variable": "HR", "value": 80}]), headers=USER)
    assert r.status_code == 422
    assert "the catalogue calls it 'heart_rate'; model 'forecast' uses:" in r.text
    # and /v1/predict still says where a forecast model's answers are
    r = fc_client.post("/v1/predict", json=request_body(model="forecast"), headers=USER)
    assert r.status_code == 422
    assert "its forecasts come from /v1/forecast" in r.json()["error"]["message"]
