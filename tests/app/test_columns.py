"""Observations as columns: {"time": [...], "variable": [...], "value": [...]}.

The column form is the list form's rows written column by column: the same answers (to
the last bit), the same checks and the same 422 messages, naming the patient and the row
index; the batch route's fast decoder reads it as it reads rows.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app import plainbody
from app.jsonbody import parse_json
from app.main import create_app
from app.plainbody import decode_plain_batch
from app.schemas import BatchRequest
from tests.app.support import USER, request_body, settings_for
from tests.app.test_plainbody import PLAIN_PATIENTS, _validated

ISO = {"patient_id": "iso", "admitted_at": "2026-11-22T08:00:00+01:00", "observations": [
    {"time": "2026-11-22T08:30:00+01:00", "variable": "heart_rate", "value": 96},
    {"time": "2026-11-22T09:10:00+01:00", "variable": "map", "value": 64},
    {"time": "2026-11-22T11:00:00+02:00", "variable": "creatinine", "value": 2.1}]}


def as_columns(patient: dict[str, Any]) -> dict[str, Any]:
    rows = patient["observations"]
    return {**patient, "observations": {key: [row[key] for row in rows]
                                        for key in ("time", "variable", "value")}}


@pytest.fixture(scope="module")
def uncached(shared_model_dir: Path) -> Iterator[TestClient]:
    """Every request scored: a column request must not be answered from its row twin."""
    torch.set_num_threads(1)
    with TestClient(create_app(settings_for(shared_model_dir, cache_entries=0))) as c:
        yield c


def _post(client: TestClient, path: str, body: Any, **params: str) -> Any:
    r = client.post(path, content=json.dumps(body), params=params,
                    headers={**USER, "Content-Type": "application/json"})
    return r.status_code, r.json()


@pytest.mark.parametrize("patient", [request_body(), ISO], ids=["hours", "iso"])
def test_a_patient_as_columns_gets_the_answer_of_its_rows(uncached: TestClient,
                                                          patient: dict[str, Any]) -> None:
    status, rows = _post(uncached, "/v1/predict", patient)
    assert status == 200
    status, columns = _post(uncached, "/v1/predict", as_columns(patient))
    assert status == 200
    assert columns["risk"]["probability"] == pytest.approx(rows["risk"]["probability"],
                                                           abs=1e-9)
    assert columns == rows  # warnings, NEWS2, attention bins (ISO labels too), all of it


def test_a_batch_may_mix_both_forms_and_answers_as_for_rows(uncached: TestClient) -> None:
    patients: list[dict[str, Any]] = [
        request_body(patient_id="a"),
        request_body(patient_id="b", static={"age": 50},
                     observations=[{"time": 1, "variable": "heart_rate", "value": 160},
                                   {"time": 1, "variable": "heart_rate", "value": 90},
                                   {"time": 3, "variable": "urine_output", "value": 20}]),
        ISO]
    status, rows = _post(uncached, "/v1/predict/batch", {"patients": patients},
                         contributions="false")
    assert status == 200
    mixed = [as_columns(p) if i != 1 else p for i, p in enumerate(patients)]
    # Plain batches take the fast path in one form; mixed, the general path (same answers)
    assert decode_plain_batch(json.dumps({"patients": mixed[:2]}).encode()) is None
    assert decode_plain_batch(json.dumps(
        {"patients": [as_columns(p) for p in patients[:2]]}).encode()) is not None
    for body in ({"patients": [as_columns(p) for p in patients]}, {"patients": mixed}):
        assert _post(uncached, "/v1/predict/batch", body, contributions="false") == (200, rows)


@pytest.mark.parametrize(("observations", "message"), [
    ({"time": [0.5, 1.0], "variable": ["heart_rate"], "value": [100]},
     "patients[1].observations: as columns, observations.time, .variable and .value have one "
     "entry per row: lengths 2, 1, 1 differ"),
    ({"time": [0.5], "variable": ["heart_rate"]},
     "patients[1].observations: as columns, observations holds exactly the lists time, "
     "variable and value (missing: value)"),
    ({"time": [0.5], "variable": ["heart_rate"], "value": [100], "unit": ["bpm"]},
     "patients[1].observations: as columns, observations holds exactly the lists time, "
     "variable and value (unknown: unit)"),
    ({}, "patients[1].observations: as columns, observations holds exactly the lists time, "
     "variable and value (missing: time, variable, value)"),
    ({"time": 0.5, "variable": "heart_rate", "value": 100},
     "patients[1].observations: as columns, observations.time, .variable and .value are "
     "lists"),
    ({"time": [], "variable": [], "value": []},
     "patients[1].observations: empty; send at least one observation"),
    ({"time": [0.5, 1.0], "variable": ["heart_rate", "heart_rate"], "value": [100, 1000]},
     "patients[1].observations[1]: heart_rate 1000 is impossible: expected /min in 0-300 "
     "(is it in another unit?)"),
    ({"time": [0.5, -1], "variable": ["heart_rate", "sbp"], "value": [100, 120]},
     "patients[1].observations[1].time:"),
    ({"time": [0.5], "variable": ["heart_rat"], "value": [100]},
     "patients[1].observations[0].variable: unknown variable 'heart_rat'"),
    ({"time": [0.5], "variable": ["age"], "value": [70]},
     "patients[1].observations[0].variable: age is a static descriptor"),
    ({"time": [0.5], "variable": ["heart_rate"], "value": [True]},
     "patients[1].observations[0].value: value must be a number, not bool"),
    ({"time": [0.5, "2026-11-22T09:10:00+01:00"], "variable": ["heart_rate", "sbp"],
      "value": [100, 120]},
     "patients[1]: observations mix hours and ISO-8601 date-times (observations[0] and "
     "observations[1])"),
])
@pytest.mark.parametrize("first", [request_body(), as_columns(request_body())],
                         ids=["after-rows", "after-columns"])  # mixed forms; columns only
def test_bad_columns_are_refused_naming_the_patient_and_the_row(
        client: TestClient, observations: dict[str, Any], message: str,
        first: dict[str, Any]) -> None:
    body = {"patients": [first, {"observations": observations}]}
    status, answer = _post(client, "/v1/predict/batch", body)
    assert status == 422
    assert answer["error"]["message"].startswith(message)
    assert answer["error"]["index"] == 1
    # the same refusal on /v1/predict, where the patient is the body
    status, single = _post(client, "/v1/predict", {"observations": observations})
    assert status == 422
    assert single["error"]["message"].startswith(
        message.replace("patients[1].", "").replace("patients[1]:", "body:"))


def test_a_bad_row_in_columns_gets_the_message_of_the_same_bad_row(client: TestClient) -> None:
    rows = request_body(observations=[{"time": 0.5, "variable": "spo2", "value": 140},
                                      {"time": 1, "variable": "lactate", "value": "3"}])
    assert _post(client, "/v1/predict", as_columns(rows)) == _post(client, "/v1/predict", rows)


@settings(max_examples=150, deadline=None)
@given(st.lists(PLAIN_PATIENTS, min_size=1, max_size=4))
def test_the_fast_decoder_reads_columns_as_the_general_path(
        patients: list[dict[str, Any]]) -> None:
    body = json.dumps({"patients": [as_columns(p) for p in patients]},
                      ensure_ascii=False).encode()
    fast = decode_plain_batch(body)
    assert fast is not None
    assert _validated(fast) == _validated(parse_json(body))
    rows = json.dumps({"patients": patients}, ensure_ascii=False).encode()
    assert _validated(fast) == _validated(decode_plain_batch(rows))


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 300), st.floats(),
                       st.sampled_from(["map", "heart_rat", "1.5", "2026-11-22T08:30:00+01:00"]))
COLUMN_EDITS = st.one_of(  # (list, index or None for the whole list, new value or "drop")
    st.tuples(st.sampled_from(["time", "variable", "value", "unit"]), st.none(),
              st.one_of(st.just("drop"), JSON_VALUES, st.lists(JSON_VALUES, max_size=3))),
    st.tuples(st.sampled_from(["time", "variable", "value"]), st.integers(0, 5),
              JSON_VALUES | st.lists(JSON_VALUES, max_size=2)))  # an entry, or a nested list


@settings(max_examples=200, deadline=None)
@given(st.lists(PLAIN_PATIENTS, min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 2), COLUMN_EDITS), min_size=1, max_size=2))
def test_the_fast_decoder_takes_only_columns_it_reads_as_the_general_path(
        patients: list[dict[str, Any]], edits: list[tuple[int, tuple[str, int | None, Any]]]
) -> None:
    columns = [as_columns(p) for p in patients]
    for p, (name, index, value) in edits:  # a list dropped, null, of another length or type
        given = columns[p % len(columns)]["observations"]
        if index is None:
            if value == "drop":
                given.pop(name, None)
            else:
                given[name] = value
        elif isinstance(given.get(name), list) and given[name]:
            given[name][index % len(given[name])] = value
    body = json.dumps({"patients": columns}, ensure_ascii=False).encode()
    fast = decode_plain_batch(body)  # never raises: it decides no error
    if fast is not None:
        assert _validated(fast) == _validated(parse_json(body))


@pytest.mark.parametrize("edit", [
    ('"value": [118', '"value": [1], "value": [118'),  # a repeated key in the columns
    ('"value": [118, 24', '"value": [118'),  # lengths differ
    ('"value": [118', '"value": [true'),
    ('"time": [0.5', '"time": ["2026-11-22T08:30:00+01:00"'),
])
def test_columns_it_cannot_vouch_for_go_to_the_general_path(edit: tuple[str, str]) -> None:
    text = json.dumps({"patients": [as_columns(request_body())]})
    assert edit[0] in text
    assert decode_plain_batch(text.replace(edit[0], edit[1], 1).encode()) is None


def _column_batch() -> str:
    return json.dumps({"patients": [as_columns(request_body()), as_columns(
        request_body(patient_id="b", static={"age": 50}))]})


@pytest.mark.parametrize("edit", [
    # a list nested in a list of numbers: simdjson's buffer would flatten it into the list
    ('"time": [0.5, 0.5', '"time": [[0.5], 0.5'),
    ('"value": [118, 24', '"value": [118, [24]'),
    ('"value": [118, 24', '"value": [[118, 24]'),
    ('"variable": ["heart_rate"', '"variable": [["heart_rate"]'),
    ('"variable": ["heart_rate"', '"variable": [7'),
    ('"variable": ["heart_rate"', '"variable": [null'),
    ('"static": {"age": 71', '"static": {"age": 71, "age": 71'),  # repeated keys
    ('"static": {"age": 71', '"static": {"age": 71}, "static": {"age": 71'),
    ('"time": [0.5', '"time": [1], "time": [0.5'),
    ('"observations": {"time"', '"observations": {}, "observations": {"time"'),
    ('"static": {"age": 71', '"static": {"age": true'),
    ('"static": {"age": 71', '"static": {"age": [71]'),
    ('"static": {"age": 71', '"static": {"age": "71"'),
    ('"sex": "female"', '"sex": 1'),
    ('"sex": "female"', '"sex": ["female"]'),
    ('"static": {"age": 71', '"static": {"bmi": 20, "age": 71'),
    ('"patient_id": "b"', '"patient_id": ["b"]'),
    ('"patient_id": "b"', '"patient_id": {"id": "b"}'),
    ('"patient_id": "b"', '"model": 1, "patient_id": "b"'),
    ('{"patients": [', '{"other": 1, "patients": ['),
    ('{"patients": [', '{"patients": 1, "x": ['),
    ('{"patient_id": "b"', '7, {"patient_id": "b"'),
    ('"time": [0.5, 0.5', '"time": [0.5, 0.5e999'),  # too large for a double
    ('"time": [0.5, 0.5', '"time": [0.5, NaN'),
])
def test_column_batches_it_cannot_vouch_for_go_to_the_general_path(
        edit: tuple[str, str]) -> None:
    text = _column_batch()
    assert edit[0] in text
    assert decode_plain_batch(text.replace(edit[0], edit[1], 1).encode()) is None


@pytest.mark.parametrize("edit", [
    ('"patient_id": "b"', '"patient_id": "b[1]"'),  # brackets in strings are not lists
    ('"patient_id": "b"', '"patient_id": "[[b"'),
    ('"sex": "female"', '"sex": "[female]"'),
    ('"patient_id": "b"', '"model": "[x]", "patient_id": "b"'),
    ('"patient_id": "b"', '"model": null, "patient_id": "b"'),
    ('"static": {"age": 50}', '"static": null'),
    ('"static": {"age": 71', '"static": {"age": 71.5, "weight": null, "height": 180'),
    ('"value": [118', '"value": [1.18E2'),
    ('"time": [0.5', '"time": [-0.0'),
    (", ", ",\r\n\t "),  # pretty-printed
    ('{"patients"', '\ufeff{"patients"'),  # a byte-order mark
])
def test_column_batches_it_takes_validate_as_on_the_general_path(
        edit: tuple[str, str]) -> None:
    text = _column_batch()
    assert edit[0] in text
    body = text.replace(edit[0], edit[1]).encode()
    fast = decode_plain_batch(body)
    assert fast is not None
    assert _validated(fast) == _validated(parse_json(body))


def test_the_column_reader_recovers_a_parser_left_in_use() -> None:
    """A document of the shared parser still referenced (a proxy that outlived its call)
    makes the parser refuse the next body; the reader takes a fresh parser instead of
    sending every later batch down the general path."""
    body = _column_batch().encode()
    expected = _validated(decode_plain_batch(body))
    left = plainbody._parsers[0].parse(b'{"a": [1]}')
    fast = plainbody._read_columns(body)  # as the reader thread reads a large body
    assert fast is not None
    assert _validated(fast) == expected
    del left


def test_a_body_nested_too_deeply_keeps_the_shared_parser() -> None:
    shared = plainbody._parsers[0]
    body = b'{"patients": [{"observations": {"time": ' + b"[" * 2000 + b"]" * 2000 + b"}}]}"
    assert plainbody._read_columns(body) is None
    assert plainbody._parsers[0] is shared


@pytest.mark.parametrize("small", [0, 1 << 30], ids=["reader-thread", "inline"])
def test_a_large_column_batch_is_read_by_a_parser_of_its_own(
        monkeypatch: pytest.MonkeyPatch, small: int) -> None:
    body = _column_batch().encode()
    shared = plainbody._parsers[0]
    monkeypatch.setattr(plainbody, "_SMALL_BODY_BYTES", small)
    monkeypatch.setattr(plainbody, "_SHARED_PARSER_BYTES", len(body) - 1)
    fast = decode_plain_batch(body)
    assert fast is not None
    assert _validated(fast) == _validated(parse_json(body))
    assert plainbody._parsers[0] is shared


def test_a_small_column_body_does_not_wait_for_the_reader_thread() -> None:
    """Small bodies are decoded on the event loop; they are read there, not queued behind
    a large body the reader thread is busy with."""
    release = threading.Event()
    plainbody._COLUMN_READER.submit(release.wait, 30)  # the reader thread, busy
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            done = pool.submit(decode_plain_batch, _column_batch().encode())
            assert done.result(timeout=10) is not None
    finally:
        release.set()


def test_an_unknown_column_key_with_a_lone_surrogate_is_a_422(client: TestClient) -> None:
    body = ('{"patients": [{"observations": {"time": [1], "variable": ["heart_rate"], '
            '"value": [80], "u\\ud800": 1}}]}')
    r = client.post("/v1/predict/batch", content=body,
                    headers={**USER, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert "unknown: u\\ud800" in r.json()["error"]["message"]


def test_the_openapi_schema_shows_both_forms(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    forms = schema["components"]["schemas"]["PredictRequest"]["properties"]["observations"]
    assert {"$ref": "#/components/schemas/ObservationColumns"} in forms["anyOf"]
    columns = schema["components"]["schemas"]["ObservationColumns"]
    assert set(columns["required"]) == {"time", "variable", "value"}
    assert BatchRequest.model_validate(
        {"patients": [as_columns(request_body())]}).patients[0].observations.names
