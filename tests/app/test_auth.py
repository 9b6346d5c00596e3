"""Bearer keys on every /v1 route: 401 without or with a wrong key, 403 without the scope."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.security import scope_of
from tests.app.support import ADMIN, USER, USER_KEY, request_body, settings_for

ROUTES = [("POST", "/v1/predict"), ("POST", "/v1/predict/batch"), ("GET", "/v1/models"),
          ("GET", "/v1/models/default"), ("POST", "/v1/models/reload")]


def call(client: TestClient, method: str, path: str, headers: dict[str, str]):
    body = {"patients": [request_body()]} if path.endswith("batch") else request_body()
    return client.request(method, path, json=body if method == "POST" else None,
                          headers=headers)


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": USER_KEY},
    {"Authorization": f"Basic {USER_KEY}"}, {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {USER_KEY}x"}, {"Authorization": "Bearer ключ".encode()},
], ids=["none", "wrong", "no-scheme", "basic", "empty", "prefix", "non-ascii"])
def test_missing_or_wrong_key_gets_401(client: TestClient, method: str, path: str,
                                       headers: dict[str, str]) -> None:
    r = call(client, method, path, headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["kind"] == "unauthorized"


def test_user_key_on_the_admin_route_gets_403(client: TestClient) -> None:
    r = client.post("/v1/models/reload", headers=USER)
    assert r.status_code == 403
    assert r.json()["error"] == {"kind": "forbidden", "message": "this route needs an admin key"}


@pytest.mark.parametrize(("method", "path"), ROUTES[:4])
@pytest.mark.parametrize("headers", [USER, ADMIN], ids=["user", "admin"])
def test_user_and_admin_keys_work_on_user_routes(client: TestClient, method: str, path: str,
                                                 headers: dict[str, str]) -> None:
    assert call(client, method, path, headers).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_health_and_metrics_need_no_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_scheme_is_case_insensitive_and_keys_are_exact() -> None:
    settings = settings_for("unused", api_keys=["k1", "k2"], admin_keys=["a1"])
    assert scope_of("bearer k2", settings) == "user"
    assert scope_of("Bearer a1", settings) == "admin"
    with pytest.raises(Exception, match="invalid API key"):
        scope_of("Bearer K1", settings)


def test_no_configured_keys_refuses_everyone() -> None:
    settings = settings_for("unused", api_keys=[], admin_keys=[])
    with pytest.raises(Exception, match="invalid API key"):
        scope_of("Bearer anything", settings)
