"""Plain batch bodies: the fast decoder gives the general path's request, or steps aside.

Whatever `decode_plain_batch` returns must validate to exactly what `parse_json` and the
per-field validators make of the same body (the same columns, the same other fields, the
same errors); every body it cannot vouch for (repeated keys, escapes, bad types, values
out of range, unknown fields) must get None, so that the general path decides.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app import plainbody
from app.jsonbody import parse_json
from app.plainbody import decode_plain_batch
from app.schemas import BatchRequest
from tests.app.support import USER, request_body

TIMES = st.one_of(st.integers(-2, 90_000), st.floats(-1, 1e5), st.booleans(),
                  st.just("2026-11-22T08:30:00+01:00"), st.just("1.5"), st.none())
VARIABLES = st.sampled_from(["heart_rate", "spo2", "fio2", "antibiotics", "lactate", "age",
                             "heart_rat", "", "a:b"])
VALUES = st.one_of(st.integers(-5, 400), st.floats(-1, 400), st.booleans(), st.just("80"),
                   st.none())
ROWS = st.lists(st.fixed_dictionaries({"time": TIMES, "variable": VARIABLES, "value": VALUES},
                                      optional={"unit": st.just("bpm")}), max_size=3)
STATICS = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "age": st.one_of(st.integers(-1, 130), st.floats(0, 120), st.just("71")),
    "sex": st.sampled_from(["female", "male", "Male", "a:b"]),
    "weight": st.floats(20, 200), "height": st.none(), "bmi": st.just(20)}))
PATIENTS = st.fixed_dictionaries({"observations": ROWS}, optional={
    "patient_id": st.one_of(st.text(alphabet="ab:é😀 ", max_size=6), st.none(),
                            st.integers()),
    "model": st.sampled_from(["default", "", None, "other:x"]),
    "static": STATICS,
    "admitted_at": st.just("2026-11-22T08:00:00+01:00")})


def _columns(request: BatchRequest) -> list[Any]:
    """What scoring reads of each patient; numbers as repr (-0.0 == 0.0 would hide a sign)."""
    return [(p.observations.names, p.observations.code.tolist(),
             list(map(repr, p.observations.hours.tolist())),  # type: ignore[union-attr]
             list(map(repr, p.observations.values.tolist())),
             p.model_dump(exclude={"observations"})) for p in request.patients]


def _validated(value: Any) -> tuple[str, Any]:
    try:
        request = BatchRequest.model_validate(value)
    except ValidationError as e:
        return "error", [(x["loc"], x["msg"]) for x in e.errors()]
    return "ok", _columns(request)


def _general(body: bytes) -> tuple[str, Any]:
    return _validated(parse_json(body))


# Rows and patients the fast path takes, and edits that may make them anything else.
PLAIN_ROWS = st.lists(st.fixed_dictionaries({
    "time": st.integers(0, 100) | st.floats(0, 100).map(lambda t: round(t, 4)),
    "variable": st.sampled_from(["heart_rate", "map", "urine_output"]),
    "value": st.integers(0, 200) | st.floats(0, 200).map(lambda v: round(v, 6))}),
    min_size=1, max_size=6)  # 19 digits in a row (0.00012345...) would take the general path
PLAIN_PATIENTS = st.fixed_dictionaries({"observations": PLAIN_ROWS}, optional={
    "patient_id": st.text(alphabet="ab:é😀 ", max_size=6), "model": st.just("default"),
    "static": st.fixed_dictionaries({}, optional={"age": st.integers(0, 120),
                                                  "sex": st.just("male")})})
EDITS = st.sampled_from(["time", "variable", "value", "unit", "patient_id", "model", "static",
                         "admitted_at", "observations"])
BAD = {"time": TIMES, "variable": VARIABLES, "value": VALUES, "unit": st.just("bpm")}


@settings(max_examples=300, deadline=None)
@given(st.lists(PLAIN_PATIENTS, min_size=1, max_size=4), st.sampled_from([None, 1]),
       st.lists(st.tuples(EDITS, st.integers(0, 3), st.integers(0, 5)), max_size=2),
       st.data())
def test_the_fast_decoder_gives_the_general_paths_request(
        patients: list[dict[str, Any]], indent: int | None,
        edits: list[tuple[str, int, int]], data: st.DataObject) -> None:
    for field, p, r in edits:  # a few values of any kind in an otherwise plain batch
        patient = patients[p % len(patients)]
        rows = patient["observations"]
        if field in BAD:
            if rows:  # an earlier edit may have emptied them
                rows[r % len(rows)][field] = data.draw(BAD[field])
        else:
            patient[field] = data.draw(PATIENTS.map(lambda x, f=field: x.get(f, [])))
    body = json.dumps({"patients": patients}, indent=indent, ensure_ascii=False).encode()
    fast = decode_plain_batch(body)
    if not edits:
        assert fast is not None  # plain: taken
    if fast is None:
        return
    assert _validated(fast) == _general(body)


def _plain_batch() -> dict[str, Any]:
    return {"patients": [request_body(), request_body(patient_id="b", static={"age": 50})]}


def test_a_plain_batch_takes_the_fast_path() -> None:
    body = json.dumps(_plain_batch()).encode()
    fast = decode_plain_batch(body)
    assert fast is not None
    assert _validated(fast)[0] == "ok"
    assert str(_validated(fast)) == str(_general(body))


@pytest.mark.parametrize("edit", [
    ('"value": 118', '"value": 1, "value": 118'),  # a repeated key in a row
    ('"patient_id": "b"', '"patient_id": "a:b", "patient_id": "b"'),  # its colon balanced?
    ('"age": 50', '"age": 40, "age": 50'),
    ('{"patients": [', '{"patients": [], "patients": ['),
    ('"heart_rate"', '"heart\\u005frate"'),  # an escape
    ('"time": 0.5', '"time": "2026-11-22T08:30:00+01:00"'),
    ('"value": 118', '"value": 118.0000000000000000001'),  # 19 digits in a row
    ('"value": 118', '"value": true'),
    ('"value": 118', '"value": 1e999'),
    ('"value": 118', '"value": 1000'),  # impossible
    ('"value": 118', '"value": 118, "unit": "bpm"'),
    ('"static": {"age": 50}', '"static": {"age": 50, "bmi": 3}'),
    ('"patient_id": "b"', '"patient_id": "b", "admitted_at": "2026-11-22T08:00:00+01:00"'),
    ('"patient_id": "b"', '"patient_id": "\xff"'),  # not UTF-8 (below)
    ('"value": 118', '"value": NaN'),  # JSON has no NaN or Infinity; Arrow reads them
    ('"time": 0.5', '"time": -Infinity'),
    ('"age": 50', '"age": Infinity'),
    ('"value": 118', '"value": -0'),  # orjson: the integer 0; Arrow: -0.0
    ('"value": 118', '"value": null'),
    ('"age": 50', '"age": "50"'),
    ('"patient_id": "b"', '"patient_id": 7'),  # Arrow would not make it a string either
    ('"patient_id": "b"', '"patient_id": "b", "patient_id": null'),  # repeated, one null
    ('"static": {"age": 50}', '"static": null, "static": {"age": 50}'),
    ('"patients": [', '"patients": [null, '),
    ('{"time": 0.5', 'null, {"time": 0.5'),  # a null row
    ('{"time": 0.5', '{}, {"time": 0.5'),
])
def test_bodies_it_cannot_vouch_for_go_to_the_general_path(edit: tuple[str, str]) -> None:
    text = json.dumps(_plain_batch())
    assert edit[0] in text
    body = text.replace(edit[0], edit[1], 1).encode()
    if "\xff" in edit[1]:
        body = body.replace("\xff".encode(), b"\xff")
    assert decode_plain_batch(body) is None


@pytest.mark.parametrize("body", [
    b"", b" \n", b"[]", b"null", b'{"patients": null}', b'{"patients": []}',
    b'{"patients": [{"observations": null}]}', b'{"patients": [{"observations": []}]}',
    b'{"patients": [{"observations": {"time": null, "variable": ["map"], "value": [80]}}]}',
    b'{"patients": [{"observations": {"time": [1], "variable": ["map"], "value": [null]}}]}',
    b'{"patients": [{"observations": {"time": [1], "variable": ["map"]}}]}',
    b'{"patients": [{"observations": {}}]}',
    b'{"patients": [{"observations": [{"time": 1, "variable": "map", "value": 80}]}, '
    b'{"observations": {"time": [1], "variable": ["map"], "value": [80]}}]}',  # both forms
    b'{"patients": [{"observations": [{"time": 1, "variable": "map", "value": 80}]}]}\n{}',
    b'{"patients": [{"observations": [{"time": 1, "variable": "map", "value": 80}]}]} x',
    b'{"patients": [{"observations": [{"time": 1, "variable": "map", "value": 80}]}]}\x00',
    b'{"patients": [{"patient_id": "\xed\xa0\x80", '  # a UTF-8-encoded surrogate
    b'"observations": [{"time": 1, "variable": "map", "value": 80}]}]}',
    b'{"patients": [{"patient_id": "\xc0\xaf", '  # overlong UTF-8
    b'"observations": [{"time": 1, "variable": "map", "value": 80}]}]}',
    b'{"patients": [{"patient_id": "a\x01", '  # a control character in a string
    b'"observations": [{"time": 1, "variable": "map", "value": 80}]}]}',
    b'{"patients": [{"patient_id": "a", '  # a trailing comma
    b'"observations": [{"time": 1, "variable": "map", "value": 80},]}]}',
], ids=repr)
def test_bodies_of_another_shape_go_to_the_general_path(body: bytes) -> None:
    assert decode_plain_batch(body) is None


@pytest.mark.parametrize("edit", [
    (b'{"patients"', b'\xef\xbb\xbf{"patients"'),  # a BOM: both read past it
    (b", ", b",\r\n\t "),  # pretty-printed
    (b'"value": 118', b'"value": 1.18E2'),
    (b'"value": 118', b'"value": 11800e-2'),
    (b'"value": 118', b'"value": 118.00000000000001'),  # 17 digits: rounded as orjson does
    (b'"value": 24', b'"value": 5e-324'),
    (b'"value": 24', b'"value": 1e-400'),  # underflows to 0.0 in both
    (b'"time": 0.5', b'"time": -0.0'),  # hour -0.0 is hour 0, with its sign
    (b'"patient_id": "b"', b'"patient_id": null'),  # null: as if left out
    (b'"patient_id": "b"', b'"patient_id": "null: -1"'),
    (b'"patient_id": "b"', b'"model": null, "patient_id": "b"'),
    (b'"static": {"age": 50}', b'"static": null'),
    (b'"static": {"age": 50}', b'"static": {"age": null, "sex": null}'),
    (b'"static": {"age": 50}', b'"static": {}'),
    (b'"static": {"age": 50}', b'"static": {"age": 500}'),  # taken; the model refuses it
])
def test_bodies_it_takes_validate_as_on_the_general_path(edit: tuple[bytes, bytes]) -> None:
    text = json.dumps(_plain_batch()).encode()
    assert edit[0] in text
    body = text.replace(edit[0], edit[1])
    fast = decode_plain_batch(body)
    assert fast is not None
    assert _validated(fast) == _general(body)


def test_a_repeated_key_in_a_plain_batch_is_refused_as_before(client: TestClient) -> None:
    body = json.dumps(_plain_batch()).replace('"value": 118', '"value": 1, "value": 118', 1)
    r = client.post("/v1/predict/batch", content=body,
                    headers={**USER, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert "duplicate key 'value'" in r.json()["error"]["message"]


def test_a_fault_in_the_fast_decoder_costs_speed_not_the_answer(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(_plain_batch())
    headers = {**USER, "Content-Type": "application/json"}
    before = client.post("/v1/predict/batch", content=body, headers=headers)
    assert before.status_code == 200

    def broken(_: bytes) -> None:
        raise RuntimeError("a bug in the fast path")

    monkeypatch.setattr("app.plainbody.decode_plain_batch", broken)
    with caplog.at_level("WARNING", logger="vitalcast.jsonbody"):
        after = client.post("/v1/predict/batch", content=body, headers=headers)
    assert after.status_code == 200
    assert after.json() == before.json()  # the general path's answer: the same
    logged = [r.getMessage() for r in caplog.records if r.name == "vitalcast.jsonbody"]
    assert logged == ["fast body decoder failed (RuntimeError); the body takes the "
                      "general path"]
    assert "a bug" not in caplog.text  # the error's kind only: no body, no message


def _unplain_by_regex(body: bytes) -> bool:
    return (re.search(rb"\d{19}", body) is not None
            or re.search(rb"-0(?![.\deE])", body) is not None)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.lists(st.sampled_from(
    [b"1", b"9", b"0", b"-", b"-0", b"-0.", b"-0e", b".", b"e", b"E", b" ", b",", b"]"]),
    max_size=40))
def test_unplain_number_check_finds_what_the_regexes_find(noise: bytes, parts: list[bytes]
                                                          ) -> None:
    body = noise + b"".join(parts)
    assert plainbody.has_unplain_number(body) == _unplain_by_regex(body)


@pytest.mark.parametrize("where", [-20, -19, -18, -10, -1, 0, 1, 5])
@pytest.mark.parametrize("what", [b"1234567890123456789", b"123456789012345678", b"-0]",
                                  b"-0.5", b"-0", b"-01"])
def test_unplain_number_check_across_its_chunks(where: int, what: bytes) -> None:
    """Numbers that straddle a chunk boundary, or end the body, are found as the regexes
    find them."""
    filler = b'{"time": 1.5, "value": 80},'
    body = (filler * (plainbody._CHUNK // len(filler) + 1))[:plainbody._CHUNK + where]
    for candidate in (body + what + b" " + filler, body + what):
        assert plainbody.has_unplain_number(candidate) == _unplain_by_regex(candidate), \
            candidate[plainbody._CHUNK - 30:plainbody._CHUNK + 30]


def test_the_fast_paths_columns_are_read_only_views() -> None:
    """Views of Arrow's buffers, read-only as Array.to_numpy's were: nothing downstream
    writes into them."""
    decoded = decode_plain_batch(json.dumps(_plain_batch()).encode())
    assert decoded is not None
    for patient in decoded["patients"]:
        rows = patient["observations"]
        assert not rows.values.flags.writeable and not rows.hours.flags.writeable
