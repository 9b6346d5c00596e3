"""Body size limit: 413 by Content-Length or while streaming, before any parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.support import USER, request_body, settings_for

LIMIT = 4096


@pytest.fixture(scope="module")
def small(shared_model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(shared_model_dir, max_body_bytes=LIMIT))) as c:
        yield c


def big_body(n: int = 200) -> bytes:
    obs = [{"time": i * 0.1, "variable": "heart_rate", "value": 80} for i in range(n)]
    return json.dumps(request_body(observations=obs)).encode()


def test_body_over_the_limit_gets_413(small: TestClient) -> None:
    body = big_body()
    assert len(body) > LIMIT
    r = small.post("/v1/predict", content=body, headers={**USER, "Content-Type":
                                                         "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == {"kind": "body_too_large",
                                 "message": f"request body exceeds the limit of {LIMIT} bytes"}


def test_body_over_the_limit_on_v2_gets_413_in_the_protocols_shape(small: TestClient) -> None:
    r = small.post("/v2/models/default/infer", content=big_body(),
                   headers={**USER, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"error": f"request body exceeds the limit of {LIMIT} bytes"}


def test_streamed_body_over_the_limit_gets_413(small: TestClient) -> None:
    body = big_body()

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for i in range(0, len(body), 512):
            yield body[i:i + 512]

    r = small.post("/v1/predict", content=chunks(), headers={**USER, "Content-Type":
                                                             "application/json"})
    assert r.status_code == 413


def test_body_under_the_limit_is_served(small: TestClient) -> None:
    body = big_body(20)
    assert len(body) < LIMIT
    r = small.post("/v1/predict", content=body, headers={**USER, "Content-Type":
                                                         "application/json"})
    assert r.status_code == 200, r.text


def test_413_comes_before_authentication(small: TestClient) -> None:
    r = small.post("/v1/predict", content=big_body(), headers={"Content-Type":
                                                               "application/json"})
    assert r.status_code == 413
