"""Open Inference Protocol (KServe V2) REST: metadata, readiness, and inference on the
tensorisation of a patient matching /v1/predict for the same patient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from models.checkpoint import Checkpoint
from models.features import Tensors, tensorise
from tests.app.support import USER, make_checkpoint, request_body, settings_for
from tests.app.test_whatif import make_effect_checkpoint


def checkpoint(client: TestClient, name: str = "default") -> Checkpoint:
    ckpt: Checkpoint = client.app.state.registry.get(name)  # type: ignore[attr-defined]
    return ckpt


def tensors_of(ckpt: Checkpoint, bodies: list[dict[str, Any]]) -> Tensors:
    """The tensorisation of /v1 request bodies (times in hours), as a client would do it."""
    rows = [(str(i), o["time"], o["variable"], float(o["value"]))
            for i, body in enumerate(bodies) for o in body["observations"]]
    observations = pd.DataFrame(rows, columns=["patient_id", "time_hours", "variable", "value"])
    patients = pd.DataFrame([{"patient_id": str(i), **body.get("static", {})}
                             for i, body in enumerate(bodies)])
    ids = [str(i) for i in range(len(bodies))]
    return tensorise(observations, ckpt.normalizer, ckpt.grid, patients=patients,
                     patient_ids=ids)


def tensor(name: str, array: np.ndarray, datatype: str = "FP32", *,
           nested: bool = False) -> dict[str, Any]:
    data = array.tolist() if nested else array.reshape(-1).tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def infer_body(t: Tensors, *, step_mask: bool = False) -> dict[str, Any]:
    inputs = [tensor("values", t.values), tensor("mask", t.mask, nested=True),
              tensor("hours_since", t.delta), tensor("static", t.static)]
    if step_mask:
        inputs.append(tensor("step_mask", t.step_mask, "BOOL"))
    return {"id": "req-1", "inputs": inputs}


def infer(client: TestClient, body: dict[str, Any], path: str = "/v2/models/default/infer",
          status: int = 200) -> dict[str, Any]:
    r = client.post(path, json=body, headers=USER)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


def outputs(out: dict[str, Any]) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in out["outputs"]}


def error_of(client: TestClient, body: dict[str, Any], status: int = 400,
             path: str = "/v2/models/default/infer") -> str:
    out = infer(client, body, path, status)
    assert set(out) == {"error"} and isinstance(out["error"], str)
    return str(out["error"])


def test_infer_gets_the_same_risk_as_v1_predict(client: TestClient) -> None:
    bodies = [request_body(), request_body(observations=[
        {"time": 1.0, "variable": "heart_rate", "value": 135},
        {"time": 7.5, "variable": "map", "value": 58},
        {"time": 9.0, "variable": "creatinine", "value": 3.1}], static={"age": 45})]
    v1 = [client.post("/v1/predict", json=b, headers=USER).json() for b in bodies]
    out = infer(client, infer_body(tensors_of(checkpoint(client), bodies)))
    assert out["model_name"] == "default" and out["id"] == "req-1"
    assert out["model_version"] == v1[0]["model"]["version"]
    got = outputs(out)
    assert [o["datatype"] for o in out["outputs"]] == ["FP32"] * 3
    assert got["risk"].shape == (2,) and got["los"].shape == (2,)
    assert got["attention"].shape == (2, 48)
    for i, response in enumerate(v1):
        assert got["risk"][i] == pytest.approx(response["risk"]["probability"], abs=1e-6)
        assert got["los"][i] == pytest.approx(response["prognosis"]["los_days"], abs=1e-5)
        window = [b["weight"] for b in response["explanation"]["attention"]]
        seen = got["attention"][i][got["attention"][i] > 0]
        assert seen == pytest.approx(window, abs=1e-6)


def test_explicit_step_mask_and_version_path_give_the_same_answer(client: TestClient) -> None:
    ckpt = checkpoint(client)
    t = tensors_of(ckpt, [request_body()])
    plain = outputs(infer(client, infer_body(t)))
    path = f"/v2/models/default/versions/{ckpt.version}/infer"
    explicit = outputs(infer(client, infer_body(t, step_mask=True), path))
    assert explicit["risk"] == pytest.approx(plain["risk"], abs=0)


def test_requested_outputs_only(client: TestClient) -> None:
    body = infer_body(tensors_of(checkpoint(client), [request_body()]))
    body["outputs"] = [{"name": "risk"}]
    assert [o["name"] for o in infer(client, body)["outputs"]] == ["risk"]
    body["outputs"] = [{"name": "forecast"}]
    assert "unknown output 'forecast'" in error_of(client, body)


def test_wrong_datatype_or_shape_is_a_400_naming_the_tensor(client: TestClient) -> None:
    t = tensors_of(checkpoint(client), [request_body()])
    body = infer_body(t)
    body["inputs"][0]["datatype"] = "FP64"
    assert "input 'values' has datatype FP64" in error_of(client, body)
    body = infer_body(t)
    body["inputs"][2]["shape"] = [1, 24, 22]
    assert "input 'hours_since' has shape [1, 24, 22]" in error_of(client, body)
    body = infer_body(t)
    body["inputs"][3]["data"] = body["inputs"][3]["data"][:-1]
    assert "input 'static' has 7 elements" in error_of(client, body)
    body = infer_body(t, step_mask=True)
    body["inputs"][4]["data"] = [1] * 48
    assert "input 'step_mask': BOOL data must be true/false" in error_of(client, body)
    body = infer_body(t)
    body["inputs"][1]["data"][0][0][0] = 0.5
    assert "input 'mask' must hold only 0 and 1" in error_of(client, body)
    body = infer_body(t)
    del body["inputs"][1]
    assert "missing input 'mask'" in error_of(client, body)
    body = infer_body(t)
    body["inputs"][0]["data"][3] = "high"
    assert "input 'values'" in error_of(client, body)


def test_malformed_bodies_are_a_400_in_the_protocols_shape(client: TestClient) -> None:
    r = client.post("/v2/models/default/infer", content=b"{not json", headers={
        **USER, "Content-Type": "application/json"})
    assert r.status_code == 400 and list(r.json()) == ["error"]
    assert r.json()["error"].startswith("body is not valid JSON")
    assert error_of(client, {"inputs": []}) == "inputs: empty; send at least one input"


@pytest.mark.parametrize("body, reason", [
    (b'{"inputs": [], "inputs": []}', "duplicate key 'inputs'"),
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (b'{"inputs": ' + b"9" * 5000 + b"}", "too many digits"),
    (b'{"inputs": "\xff"}', "not UTF-8"),
])
def test_strictly_refused_bodies_are_a_400_in_the_protocols_shape(
        client: TestClient, body: bytes, reason: str) -> None:
    r = client.post("/v2/models/default/infer", content=body, headers={
        **USER, "Content-Type": "application/json"})
    assert r.status_code == 400 and list(r.json()) == ["error"], r.text
    assert r.json()["error"].startswith("body is not valid JSON") and reason in r.json()["error"]


def test_unknown_model_or_version_is_a_404(client: TestClient) -> None:
    body = infer_body(tensors_of(checkpoint(client), [request_body()]))
    assert "unknown model 'nope'" in error_of(client, body, 404, "/v2/models/nope/infer")
    assert "not served" in error_of(client, body, 404,
                                    "/v2/models/default/versions/19990101T000000Z/infer")
    r = client.get("/v2/models/nope", headers=USER)
    assert r.status_code == 404 and "unknown model" in r.json()["error"]


def test_model_routes_need_a_key_and_answer_in_the_protocols_shape(client: TestClient) -> None:
    for path in ("/v2/models/default", "/v2/models/default/ready"):
        r = client.get(path)
        assert r.status_code == 401 and r.json() == {
            "error": "missing API key: send 'Authorization: Bearer <key>'"}
    r = client.post("/v2/models/default/infer", json={"inputs": []})
    assert r.status_code == 401 and "error" in r.json()


def test_model_metadata_lists_inputs_and_outputs(client: TestClient) -> None:
    ckpt = checkpoint(client)
    r = client.get("/v2/models/default", headers=USER)
    assert r.status_code == 200
    meta = r.json()
    assert meta["name"] == "default" and meta["platform"] == "pytorch"
    assert meta["versions"] == [ckpt.version]
    f, s = len(ckpt.normalizer.features), ckpt.normalizer.n_static_inputs
    assert meta["inputs"] == [
        {"name": "values", "datatype": "FP32", "shape": [-1, 48, f]},
        {"name": "mask", "datatype": "FP32", "shape": [-1, 48, f]},
        {"name": "hours_since", "datatype": "FP32", "shape": [-1, 48, f]},
        {"name": "static", "datatype": "FP32", "shape": [-1, s]},
        {"name": "step_mask", "datatype": "BOOL", "shape": [-1, 48]},
    ]
    assert meta["outputs"] == [
        {"name": "risk", "datatype": "FP32", "shape": [-1]},
        {"name": "los", "datatype": "FP32", "shape": [-1]},
        {"name": "attention", "datatype": "FP32", "shape": [-1, 48]},
    ]
    assert meta["parameters"]["normalizer"]["features"] == list(ckpt.normalizer.features)
    versioned = client.get(f"/v2/models/default/versions/{ckpt.version}", headers=USER)
    assert versioned.json() == meta


def test_server_metadata_and_health(client: TestClient) -> None:
    server = client.get("/v2").json()
    assert server["name"] == "vitalcast" and server["extensions"] == []
    assert isinstance(server["version"], str)
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    r = client.get("/v2/models/other/ready", headers=USER)
    assert r.status_code == 200 and r.json() == {"name": "other", "ready": True}
    assert client.get("/v2/models/nope/ready", headers=USER).status_code == 404


def test_not_ready_without_a_model_and_when_a_model_fails_to_load(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as empty:
        r = empty.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        assert empty.get("/v2/health/live").status_code == 200
    version = make_checkpoint(tmp_path, "broken")
    (version / "model.safetensors").write_bytes(b"not a tensor file")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        r = client.get("/v2/models/broken/ready", headers=USER)
        assert r.status_code == 503 and r.json() == {"name": "broken", "ready": False}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
# Where to corrupt a valid request: every field down to the first element of each data list.
PLACES = [(), ("id",), ("inputs",)] + [
    ("inputs", i, *rest) for i in range(5)
    for rest in [(), ("name",), ("shape",), ("shape", 0), ("shape", 1), ("datatype",),
                 ("data",), ("data", 0)]]


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(where=st.sampled_from(PLACES), value=JSON)
def test_any_corrupted_request_gets_a_200_or_a_400(client: TestClient, where: tuple[Any, ...],
                                                   value: Any) -> None:
    body: Any = infer_body(tensors_of(checkpoint(client), [request_body()]), step_mask=True)
    node = body
    if where:
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
    else:
        body = value
    r = client.post("/v2/models/default/infer", json=body, headers=USER)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert set(r.json()) == {"error"}


def test_a_what_if_checkpoint_such_as_scripts_serve_trains_is_served_as_by_v1(
        tmp_path: Path) -> None:
    """scripts/serve's default model is an effect checkpoint: /v2 infers with its risk model
    as /v1/predict does, instead of refusing it while /v2 ready says ready."""
    make_effect_checkpoint(tmp_path, "default")
    with TestClient(create_app(settings_for(tmp_path))) as served:
        assert served.get("/v2/models/default/ready", headers=USER).status_code == 200
        v1 = served.post("/v1/predict", json=request_body(), headers=USER)
        assert v1.status_code == 200, v1.text
        out = infer(served, infer_body(tensors_of(checkpoint(served), [request_body()])))
    assert outputs(out)["risk"][0] == pytest.approx(v1.json()["risk"]["probability"], abs=1e-6)
