"""Hostile input: every class gets a 4xx naming the problem, quickly — never a 5xx or a hang.

In-process (TestClient) for what the app decides; against a real uvicorn process for what
depends on the HTTP server: body limits with and without Content-Length, and a client that
stalls halfway through its body.

Duplicate keys in a JSON object are refused (422), not last-wins: an observation with two
"value"s is ambiguous, and a clinical score must not silently pick one.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from benchmarks.soak import BODY_LIMIT, Server, serve
from tests.app.support import USER, make_checkpoint, request_body

JSON = {**USER, "Content-Type": "application/json"}
QUICK = 5.0  # seconds: a refusal that takes longer than this on 2 shared cores is a bug


def post(c: TestClient, content: bytes | str, headers: dict[str, str] | None = None,
         path: str = "/v1/predict", within: float = QUICK) -> httpx.Response:
    start = time.perf_counter()
    r: httpx.Response = c.post(path, content=content,
                               headers=JSON if headers is None else headers)
    elapsed = time.perf_counter() - start
    assert r.status_code < 500, r.text
    assert elapsed < within, f"took {elapsed:.1f} s"
    return r


def message(r: httpx.Response) -> str:
    return str(r.json()["error"]["message"])


def text(**overrides: object) -> str:
    return json.dumps(request_body(**overrides))


# --- nesting, numbers, types -----------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"patient_id": "a", "observations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
], ids=["arrays", "arrays-in-field", "objects"])
def test_deeply_nested_json_is_a_quick_422_not_a_recursion_error(client: TestClient,
                                                                  body: bytes) -> None:
    r = post(client, body)
    assert r.status_code == 422 and "nested too deeply" in message(r)


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1" + "0" * 1000, "1" + "0" * 5000])
def test_huge_number_as_a_value_is_422(client: TestClient, literal: str) -> None:
    r = post(client, text().replace('"value": 118', f'"value": {literal}'))
    assert r.status_code == 422
    assert "observations[0].value" in message(r) or "too many digits" in message(r)


@pytest.mark.parametrize("field, literal", [
    ("time", "1e400"), ("time", "1" + "0" * 1000), ("age", "1e400"), ("age", "9" * 1000)])
def test_huge_number_as_a_time_or_age_is_422(client: TestClient, field: str,
                                             literal: str) -> None:
    body = text()
    body = (body.replace('"time": 0.5', f'"time": {literal}', 1) if field == "time"
            else body.replace('"age": 71', f'"age": {literal}'))
    r = post(client, body)
    assert r.status_code == 422 and field in message(r)


@pytest.mark.parametrize("where, body", [
    ("observations[0].value", request_body(observations=[
        {"time": 1.0, "variable": "heart_rate", "value": "118"}])),
    ("observations[0].time", request_body(observations=[
        {"time": "0.5", "variable": "heart_rate", "value": 118}])),
    ("static.age", request_body(static={"age": "71"})),
    ("static.weight", request_body(static={"weight": "70.5"})),
    ("static.age", request_body(static={"age": True})),
    ("observations[0].value", request_body(observations=[
        {"time": 1.0, "variable": "heart_rate", "value": [118]}])),
    ("observations[0].value", request_body(observations=[
        {"time": 1.0, "variable": "heart_rate", "value": None}])),
])
def test_strings_and_other_non_numbers_where_numbers_belong_are_422(
        client: TestClient, where: str, body: dict[str, object]) -> None:
    r = post(client, json.dumps(body))
    assert r.status_code == 422 and message(r).startswith(where), message(r)


def test_nan_and_infinity_literals_are_422(client: TestClient) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        r = post(client, text().replace('"value": 118', f'"value": {literal}'))
        assert r.status_code == 422 and "finite" in message(r)


# --- duplicate keys, content types, size -----------------------------------------------------

def test_duplicate_key_in_an_observation_is_refused_not_last_wins(client: TestClient) -> None:
    r = post(client, text().replace('"value": 118', '"value": 118, "value": 300'))
    assert r.status_code == 422
    assert "duplicate key 'value'" in message(r)


def test_duplicate_top_level_key_is_refused(client: TestClient) -> None:
    body = text()
    r = post(client, body[:-1] + ', "patient_id": "someone-else"}')
    assert r.status_code == 422 and "duplicate key 'patient_id'" in message(r)


def test_duplicate_key_in_a_batch_is_refused(client: TestClient) -> None:
    one = text(static={"age": 71})
    r = post(client, '{"patients": [' + one.replace('"age": 71', '"age": 71, "age": 17') + "]}",
             path="/v1/predict/batch")
    assert r.status_code == 422 and "duplicate key 'age'" in message(r)


@pytest.mark.parametrize("content_type, body", [
    ("text/plain", None),
    ("application/x-www-form-urlencoded", "patient_id=a&observations=1"),
    ("application/xml", "<patient><id>a</id></patient>"),
    ("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1"
                                        "\r\n--x--\r\n"),
])
def test_wrong_content_type_is_a_415_that_says_to_send_json(client: TestClient,
                                                            content_type: str,
                                                            body: str | None) -> None:
    r = post(client, text() if body is None else body,
             headers={**USER, "Content-Type": content_type})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["kind"] == "unsupported_media_type"
    assert f"body sent with Content-Type {content_type!r}" in message(r)
    assert "'Content-Type: application/json'" in message(r)


def test_curl_data_without_a_content_type_header_is_told_to_send_one(
        client: TestClient) -> None:
    """`curl --data @request.json` sends application/x-www-form-urlencoded; a body with no
    Content-Type at all is refused alike, on /v1 and, in its own error shape, on /v2."""
    form = {**USER, "Content-Type": "application/x-www-form-urlencoded"}
    for headers in (form, USER):
        r = post(client, text(), headers=headers)
        assert r.status_code == 415 and "application/json" in message(r), r.text
        r = post(client, '{"inputs": []}', headers=headers, path="/v2/models/default/infer")
        assert r.status_code == 415, r.text
        assert set(r.json()) == {"error"} and "'Content-Type: application/json'" in \
            r.json()["error"]


def test_json_media_types_are_all_accepted(client: TestClient) -> None:
    for content_type in ("application/json", "application/json; charset=utf-8",
                         "application/fhir+json"):
        assert post(client, text(), headers={**USER, "Content-Type": content_type}
                    ).status_code == 200, content_type


def test_empty_and_non_object_bodies_are_422(client: TestClient) -> None:
    for body in ("", "null", "[]", '"x"', "0", "{", "\x00"):
        assert post(client, body).status_code == 422, body


def test_non_utf8_body_is_422(client: TestClient) -> None:
    r = post(client, b'{"patient_id": "\xff\xfe", "observations": []}')
    assert r.status_code == 422


def test_100k_observations_are_a_422_naming_the_limit(client: TestClient) -> None:
    obs = [{"time": i * 1e-3, "variable": "heart_rate", "value": 80} for i in range(100_000)]
    body = text(observations=obs)
    assert len(body) < 8 * 1024 * 1024  # under the body limit: the count limit must answer
    r = post(client, body, within=30.0)
    assert r.status_code == 422
    assert message(r) == ("observations: 100000 observations exceed the limit of 20000 "
                          "per patient")


# --- unicode -------------------------------------------------------------------------------

@pytest.mark.parametrize("patient_id", ["😀🏥-42", "\u202eDIR-RTL\u202c مريض", "a\x00b", "\ufeff",
                                        "e\u0301\u200d"])
def test_unicode_patient_ids_are_echoed_exactly(client: TestClient, patient_id: str) -> None:
    r = post(client, text(patient_id=patient_id))
    assert r.status_code == 200 and r.json()["patient_id"] == patient_id


def test_lone_surrogate_in_an_id_is_422(client: TestClient) -> None:
    body = text(patient_id="x").replace('"patient_id": "x"', '"patient_id": "\\ud800"')
    r = post(client, body)
    assert r.status_code == 422 and message(r).startswith("patient_id")


@pytest.mark.parametrize("field, value, status", [
    ("model", "😀\x00", 404), ("model", "../../etc/passwd", 404), ("model", "\u202e", 404),
])
def test_unicode_in_a_model_name_is_a_404(client: TestClient, field: str, value: str,
                                          status: int) -> None:
    r = post(client, text(**{field: value}))
    assert r.status_code == status and r.json()["error"]["kind"] == "unknown_model"


def test_unicode_in_a_variable_name_is_422(client: TestClient) -> None:
    for name in ("heart\x00rate", "hеart_rate", "😀"):  # NUL; Cyrillic е; emoji
        r = post(client, text(observations=[{"time": 1.0, "variable": name, "value": 80}]))
        assert r.status_code == 422 and "unknown variable" in message(r)


def test_non_ascii_api_key_and_request_id_are_handled(client: TestClient) -> None:
    r = post(client, text(), headers={"Authorization": "Bearer ключ".encode(),  # type: ignore[dict-item]
                                      "Content-Type": "application/json"})
    assert r.status_code == 401
    r = client.get("/healthz", headers={"X-Request-ID": "идентификатор".encode()})
    assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32


# --- against a real uvicorn process ---------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model_dir = tmp_path_factory.mktemp("served")
    make_checkpoint(model_dir)
    with serve(model_dir, tmp_path_factory.mktemp("log") / "server.log") as s:
        yield s


def _big(n: int = 3000) -> bytes:
    obs = [{"time": i * 1e-3, "variable": "heart_rate", "value": 80} for i in range(n)]
    body = text(observations=obs).encode()
    assert len(body) > BODY_LIMIT
    return body


@pytest.mark.slow
def test_real_server_refuses_a_large_body_by_content_length(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        r = c.post("/v1/predict", content=_big(), headers=JSON)
        assert r.status_code == 413 and r.json()["error"]["kind"] == "body_too_large"
        # a lying Content-Length far beyond the limit is refused before any byte is read
        with socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])),
                                      timeout=10) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nContent-Length: 10000000000\r\n\r\n{")
            assert s.recv(4096).startswith(b"HTTP/1.1 413")
        assert c.get("/healthz").status_code == 200


@pytest.mark.slow
def test_real_server_refuses_a_large_chunked_body_without_content_length(server: Server) -> None:
    body = _big(20_000)  # ~1 MiB, 16x the limit, streamed in chunks

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        try:
            r = c.post("/v1/predict", content=chunks(), headers=JSON)
            assert r.status_code == 413
        except httpx.WriteError:
            pass  # the server answered 413 and closed while the client was still sending
        assert c.post("/v1/predict", json=request_body(), headers=USER).status_code == 200


@pytest.mark.slow
def test_real_server_keeps_serving_while_a_client_stalls_mid_body(server: Server) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    stalled = []
    try:
        for _ in range(8):  # several slow clients hold connections with half a body
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nContent-Length: 5000\r\n\r\n{\"observations\": [")
            stalled.append(s)
        with httpx.Client(base_url=server.base_url, timeout=10) as c:
            start = time.perf_counter()
            r = c.post("/v1/predict", json=request_body(), headers=USER)
            assert r.status_code == 200 and time.perf_counter() - start < 10
    finally:
        for s in stalled:
            s.close()


@pytest.mark.slow
def test_real_server_answers_hostile_bodies_with_4xx(server: Server) -> None:
    bodies = [b"[" * 30_000 + b"]" * 30_000,  # under the 64 KiB limit of this server
              text().replace('"value": 118', '"value": 118, "value": 300').encode(),
              text().replace('"value": 118', '"value": 1e400').encode(),
              b"\xff" * 1000, b"{" * 10]
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        for body in bodies:
            r = c.post("/v1/predict", content=body, headers=JSON)
            assert r.status_code == 422, (body[:40], r.text)
        assert c.get("/readyz").status_code == 200


def test_model_dir_is_not_reachable_through_ids(client: TestClient, shared_model_dir: Path
                                                ) -> None:
    r = client.get("/v1/models/..%2F..%2Fetc", headers=USER)
    assert r.status_code == 404 and str(shared_model_dir) not in r.text


def test_an_intervention_long_after_the_last_measurement_is_scored_not_a_500(
        client: TestClient) -> None:
    # it lies past the model's window (which ends at the last measured bin): left out
    r = post(client, text(observations=[
        {"time": 1.0, "variable": "heart_rate", "value": 80},
        {"time": 60.0, "variable": "antibiotics", "value": 1}]))
    assert r.status_code == 200, r.text
