"""A bounded schemathesis run against the app's own OpenAPI schema: no 5xx, no response that
breaks the schema; and the documented example request works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.app.support import USER, settings_for


@pytest.fixture(scope="module")
def loaded_app(shared_model_dir: Path):
    app = create_app(settings_for(shared_model_dir))
    app.state.registry.load()  # schemathesis' client may not run the lifespan
    return app


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]


def test_api_conforms_to_its_schema(loaded_app) -> None:
    # schemathesis' pytest plugin does not run under pytest 9 (it reads Function._nodeid):
    # drive its per-operation hypothesis strategies directly instead.
    schema = schemathesis.openapi.from_asgi("/openapi.json", loaded_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    ours = {"POST /v1/predict", "POST /v1/predict/batch", "GET /v1/models",
            "GET /v1/models/{name}", "POST /v1/models/reload", "GET /healthz", "GET /readyz",
            "GET /metrics"}
    assert ours <= {op.label for op in operations}
    for operation in operations:
        if operation.path == "/v1/models/reload":  # swaps models: covered in test_registry
            continue

        @settings(max_examples=8, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(headers=USER, checks=CHECKS)

        check()


def responses(spec: dict, method: str, path: str) -> dict[str, str]:
    """Documented status -> the name of its JSON schema."""
    out = {}
    for status, response in spec["paths"][path][method]["responses"].items():
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        out[status] = schema.get("$ref", "").rsplit("/", 1)[-1]
    return out


def test_documented_errors_are_the_ones_the_routes_answer(client: TestClient) -> None:
    """No route answers FastAPI's default 422 HTTPValidationError: /v2 refuses a malformed
    request with a 400 {"error": ...}, and GET /v1/models/{name} has nothing to validate."""
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    infer = responses(spec, "post", "/v2/models/{name}/infer")
    assert "422" not in infer and infer["400"] == "OIPErrorBody"
    r = client.post("/v2/models/default/infer", json={"inputs": "x"}, headers=USER)
    assert r.status_code == 400 and list(r.json()) == ["error"]
    assert set(responses(spec, "get", "/v2/models/{name}")) == {"200", "401", "404", "503"}
    assert set(responses(spec, "get", "/v1/models/{name}")) == {"200", "401", "404", "503"}
    r = client.post("/v1/predict", content="x", headers={**USER, "Content-Type": "text/plain"})
    assert r.status_code == 415 and responses(spec, "post", "/v1/predict")["415"] == \
        "ErrorResponse"


def test_openapi_examples_are_accepted(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    examples = body["examples"]
    assert set(examples) == {"hours", "iso"}
    for example in examples.values():
        r = client.post("/v1/predict", json=example["value"], headers=USER)
        assert r.status_code == 200, r.text
    batch = spec["components"]["schemas"]["BatchRequest"]["examples"][0]
    assert client.post("/v1/predict/batch", json=batch, headers=USER).status_code == 200
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_readme_example_request_is_answered(client: TestClient) -> None:
    example = json.loads((Path(__file__).resolve().parents[2] / "examples" / "request.json")
                         .read_text())
    r = client.post("/v1/predict", json=example, headers=USER)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["risk"]["probability"] > 0 and out["explanation"]["attention"]
    assert out["news2"]["score"] == 9  # rr 24 (2), spo2 93 (2), sbp 98 (2), hr 124 (2), t 38.4 (1)
