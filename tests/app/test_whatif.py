"""what_if on POST /v1/predict: risk under each plan, effect with interval, support, and a
4xx naming the problem for every bad plan (DESIGN.md, "HTTP API", what-if)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.schemas import BatchResponse
from models.checkpoint import save_checkpoint
from models.effect import (
    EffectConfig,
    EffectModel,
    EffectNet,
    PropensityNet,
    effect_meta,
    effect_tensors,
)
from models.features import Grid
from models.networks import ModelConfig, build_model
from tests.app.support import USER, make_checkpoint, normalizer, settings_for
from training.effect import canonical_templates
from training.interventions import PLANS

ANTIBIOTICS_NOW = [{"time": float(h), "variable": "antibiotics", "value": 1}
                   for h in range(12, 48, 8)]  # a dose at 12 h, then every 8 h
VASOPRESSOR_6H = [{"time": 12.0, "variable": "vasopressor", "value": 0.1},
                  {"time": 18.0, "variable": "vasopressor", "value": 0}]


def make_effect_checkpoint(model_dir: Path, name: str, seed: int = 0,
                           rare_vasopressor: bool = False) -> Path:
    """A tiny, randomly initialised but real effect checkpoint (risk model + what-if nets);
    with `rare_vasopressor` its propensity network all but never chooses vasopressor_6h."""
    norm, grid = normalizer(), Grid(1.0, 48)
    torch.manual_seed(seed)
    rcfg = ModelConfig(arch="gru", n_inputs=3 * len(norm.features),
                       n_static=norm.n_static_inputs, hidden=8, attn_dim=8, dropout=0.0)
    ecfg = EffectConfig(arch="gru", n_features=len(norm.features), n_interventions=4,
                        n_static=norm.n_static_inputs, n_plans=len(PLANS), n_steps=48,
                        hidden=8, dropout=0.0, map_index=list(norm.features).index("map"))
    effect = EffectModel(ecfg, PLANS, canonical_templates(norm, grid), [EffectNet(ecfg)],
                         [EffectNet(ecfg)], PropensityNet(ecfg),
                         {"antibiotics_now": (-3.0, 1.0), "vasopressor_6h": (-1.0, 1.0)},
                         0.9, 85.0, 15.0, (12, 36))
    if rare_vasopressor:
        with torch.no_grad():
            effect.propensity.head[-1].bias[2] -= 8.0
    return save_checkpoint(model_dir, name, build_model(rcfg), rcfg, norm, grid,
                           task="effect", fingerprint="test",
                           extra={"effect": effect_meta(effect)},
                           tensors=effect_tensors(effect))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("whatif-models")
    make_checkpoint(root, "default")  # a risk model without an effect head
    make_effect_checkpoint(root, "whatif")
    make_effect_checkpoint(root, "rare", rare_vasopressor=True)
    torch.set_num_threads(1)
    with TestClient(create_app(settings_for(root))) as c:
        yield c


def body(*plans: dict[str, Any], model: str = "whatif", **extra: Any) -> dict[str, Any]:
    return {"model": model, "static": {"age": 71, "sex": "female"},
            "observations": [
                {"time": 2.0, "variable": "heart_rate", "value": 118},
                {"time": 2.0, "variable": "map", "value": 62},
                {"time": 6.5, "variable": "lactate", "value": 3.9},
                {"time": 9.0, "variable": "antibiotics", "value": 1},
                {"time": 11.5, "variable": "map", "value": 58},
            ],
            "what_if": list(plans), **extra}


def post(client: TestClient, payload: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = client.post("/v1/predict", json=payload, headers=USER)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


def error(client: TestClient, payload: dict[str, Any]) -> str:
    return str(post(client, payload, 422)["error"])


def test_what_if_answers_each_plan_against_no_further_intervention(client: TestClient) -> None:
    out = post(client, body({"label": "antibiotics now", "interventions": ANTIBIOTICS_NOW},
                            {"label": "vasopressor 6 h", "interventions": VASOPRESSOR_6H},
                            {"label": "nothing more", "interventions": []}))
    assert 0.0 <= out["risk"]["probability"] <= 1.0  # the risk model still answers
    abx, vaso, nothing = out["what_if"]
    assert [a["label"] for a in out["what_if"]] == ["antibiotics now", "vasopressor 6 h",
                                                    "nothing more"]
    for answer, plan in ((abx, "antibiotics_now"), (vaso, "vasopressor_6h")):
        diff = answer["effect"]["risk_difference"]
        assert diff == pytest.approx(answer["risk"]["probability"]
                                     - answer["baseline"]["probability"])
        lo, hi = answer["effect"]["interval"]
        assert lo <= diff <= hi and lo < hi
        assert answer["effect"]["nominal_coverage"] == 0.9
        assert answer["support"]["plan"] == plan
        assert 0.05 < answer["support"]["propensity"] < 1.0
        assert answer["warnings"] == []
        assert [p["time"] for p in answer["forecast"]["map"]] == [13.0, 14.0, 15.0, 16.0,
                                                                  17.0, 18.0]
    assert nothing["effect"]["risk_difference"] == 0.0
    assert nothing["effect"]["interval"] == [0.0, 0.0]
    assert nothing["support"]["plan"] == "none"


def test_what_if_is_deterministic(client: TestClient) -> None:
    payload = body({"label": "a", "interventions": ANTIBIOTICS_NOW})
    assert post(client, payload) == post(client, payload)


def test_the_same_series_with_and_without_plans_answers_each_as_asked(
        client: TestClient) -> None:
    """The prediction cache keys the rows, not the plans: a hit still answers this request's."""
    plain = {k: v for k, v in body().items() if k != "what_if"}
    planned = body({"label": "a", "interventions": ANTIBIOTICS_NOW})
    first, with_plans, again = post(client, plain), post(client, planned), post(client, plain)
    assert first["what_if"] is None and again == first
    assert [a["label"] for a in with_plans["what_if"]] == ["a"]
    assert {**with_plans, "what_if": None} == first


def test_a_plan_the_data_never_show_gets_a_support_warning(client: TestClient) -> None:
    (answer,) = post(client, body({"label": "big bolus", "interventions": [
        {"time": 12.0, "variable": "fluid_bolus", "value": 1000}]}))["what_if"]
    assert answer["support"] == {"propensity": 0.0, "plan": None}
    assert any("propensity is 0" in w for w in answer["warnings"])
    assert answer["effect"]["interval"][0] <= answer["effect"]["risk_difference"]


def test_a_plan_the_policy_rarely_gives_gets_a_support_warning(client: TestClient) -> None:
    (answer,) = post(client, body({"label": "v", "interventions": VASOPRESSOR_6H},
                                  model="rare"))["what_if"]
    assert answer["support"]["plan"] == "vasopressor_6h"
    assert 0.0 < answer["support"]["propensity"] < 0.05
    assert any("barely supported" in w and "< 0.05" in w for w in answer["warnings"])


def test_a_decision_outside_the_trained_hours_is_flagged(client: TestClient) -> None:
    payload = body({"label": "a", "interventions": [
        {"time": float(h), "variable": "antibiotics", "value": 1} for h in range(7, 48, 8)]})
    payload["observations"] = [o for o in payload["observations"] if o["time"] < 7.0]
    (answer,) = post(client, payload)["what_if"]
    assert answer["support"]["plan"] == "antibiotics_now"
    assert any("decision at hour 7 lies outside" in w for w in answer["warnings"])


def test_iso_requests_get_iso_forecast_times(client: TestClient) -> None:
    t0 = datetime.fromisoformat("2026-11-22T08:00:00+01:00")

    def at(h: float) -> str:
        return (t0 + timedelta(hours=h)).isoformat()

    payload = body({"label": "v", "interventions": [
        {"time": at(12.0), "variable": "vasopressor", "value": 0.1},
        {"time": at(18.0), "variable": "vasopressor", "value": 0}]}, admitted_at=at(0))
    for o in payload["observations"]:
        o["time"] = at(o["time"])
    (answer,) = post(client, payload)["what_if"]
    assert answer["forecast"]["map"][0]["time"] == at(13.0)
    assert answer["support"]["plan"] == "vasopressor_6h"


def test_batch_requests_carry_what_if_per_patient(client: TestClient) -> None:
    plain = body()
    del plain["what_if"]
    r = client.post("/v1/predict/batch", headers=USER, json={"patients": [
        plain, body({"label": "a", "interventions": ANTIBIOTICS_NOW})]})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["what_if"] is None and second["what_if"][0]["label"] == "a"
    # encoded without the response models, written exactly as they would write it
    assert BatchResponse.model_validate_json(r.content).model_dump_json().encode() == r.content


@pytest.mark.parametrize("plan, message", [
    ({"label": "early", "interventions": [{"time": 10.0, "variable": "antibiotics",
                                           "value": 1}]},
     "what_if[0].interventions[0].time 10 h is before the last observation (hour 11.5"),
    ({"label": "x", "interventions": [{"time": 12.0, "variable": "aspirin", "value": 1}]},
     "unknown intervention 'aspirin'"),
    ({"label": "x", "interventions": [{"time": 12.0, "variable": "heart_rate", "value": 1}]},
     "heart_rate is a measurement, not an intervention"),
    ({"label": "x", "interventions": [{"time": 12.0, "variable": "vasopressor",
                                       "value": 50}]},
     "vasopressor at hour 12: rate 50 is impossible (expected 0-5 ug/kg/min)"),
    ({"label": "x", "interventions": [{"time": 12.0, "variable": "antibiotics",
                                       "value": -1}]},
     "what_if[0].interventions[0]: antibiotics at hour 12: dose -1 is impossible (expected "
     "0-1 doses)"),
    ({"label": "x", "interventions": [{"time": 12.0, "variable": "mech_vent",
                                       "value": 0.5}]},
     "mech_vent at hour 12: state 0.5 is impossible: mech_vent is 0 (off) or 1 (on)"),
    ({"label": "x", "interventions": [
        {"time": 12.0, "variable": "vasopressor", "value": 0.1},
        {"time": 12.0, "variable": "antibiotics", "value": 1},
        {"time": 12.0, "variable": "vasopressor", "value": 0.3}]},
     "what_if[0].interventions: rows 0 and 2 both set vasopressor at hour 12 (0.1 and 0.3): "
     "which is meant is ambiguous"),
    ({"label": "x", "interventions": [{"time": "2026-11-22T20:00:00+01:00",
                                       "variable": "antibiotics", "value": 1}]},
     "observations use hours"),
])
def test_bad_plans_are_refused_naming_the_problem(client: TestClient, plan: dict[str, Any],
                                                  message: str) -> None:
    assert message in error(client, body(plan))


def test_a_model_without_an_effect_head_refuses_what_if_with_422(client: TestClient) -> None:
    message = error(client, body({"label": "a", "interventions": ANTIBIOTICS_NOW},
                                 model="default"))
    assert "model 'default' has no treatment-effect model" in message


def test_a_history_filling_the_window_leaves_nothing_to_plan(client: TestClient) -> None:
    payload = body({"label": "a", "interventions": []})
    payload["observations"].append({"time": 47.5, "variable": "map", "value": 60})
    assert "leaves no hour" in error(client, payload)
