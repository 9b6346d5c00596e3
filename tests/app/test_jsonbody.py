"""Strict JSON bodies: one parse per request, the same value as the standard library's
wherever the fast path is taken, and every duplicate key refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute

from app import jsonbody
from app.jsonbody import StrictJsonRoute, parse_json
from app.main import create_app
from tests.app.support import settings_for

# Keys and strings that are hard for the fast path: colons, quotes, unicode, escapes.
TEXT = st.text(alphabet=st.sampled_from(list('ab:"\\é😀 \u2028{}[],')), max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-(10**25), 10**25)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(VALUES, st.sampled_from([None, 2]))
def test_parse_json_gives_the_standard_librarys_value(value: Any, indent: int | None) -> None:
    body = json.dumps(value, indent=indent, ensure_ascii=False).encode()
    assert parse_json(body) == json.loads(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60) | st.text(alphabet="0123456789 .e-\u0663x", max_size=60)
       .map(str.encode))
def test_long_numbers_are_found_as_the_regex_finds_them(body: bytes) -> None:
    """Integers orjson would turn into floats send the body to the standard library."""
    assert jsonbody.has_long_number(body) == (re.search(rb"\d{19}", body) is not None)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, SCALARS, min_size=1, max_size=4), SCALARS, st.data())
def test_every_duplicate_key_is_refused(obj: dict[str, Any], other: Any,
                                        data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    body = json.dumps(obj, ensure_ascii=False)
    duplicate = f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(other)}"
    nested = '{"outer": [' + body[:-1] + (", " if len(obj) else "") + duplicate + "}]}"
    with pytest.raises(json.JSONDecodeError, match="duplicate key"):
        parse_json(nested.encode())


def test_escaped_colons_cannot_hide_a_duplicate() -> None:
    # \u003a decodes to ":" and would balance the colon count of a dropped duplicate key
    with pytest.raises(json.JSONDecodeError, match="duplicate key 'a'"):
        parse_json(b'{"a": "\\u003a", "a": 1}')


def test_the_fast_path_is_taken_for_an_ordinary_request(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def slow(body: bytes) -> Any:
        raise AssertionError("slow path taken")

    monkeypatch.setattr(jsonbody, "_strict_stdlib", slow)
    body = json.dumps({"patient_id": "p:1", "observations": [
        {"time": 0.5, "variable": "heart_rate", "value": 118}] * 50}).encode()
    assert parse_json(body)["patient_id"] == "p:1"


@pytest.mark.parametrize("body, reason", [
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"9" * 5000, "too many digits"),
    (b'{"a": "\xff"}', "not UTF-8"),
    (b'{"a": 1,}', "double quotes"),
])
def test_refusals_are_json_decode_errors_naming_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=reason):
        parse_json(body)


def test_long_integers_keep_their_exact_value() -> None:
    assert parse_json(b"[-9223372036854775809, 123456789012345678901234]") == [
        -9223372036854775809, 123456789012345678901234]


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Routes of the app, through included routers (FastAPI keeps those nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


def test_every_route_that_takes_a_body_parses_it_strictly(shared_model_dir: Path) -> None:
    app = create_app(settings_for(shared_model_dir, benchmark_routes=True))
    with_body = [r for r in _api_routes(app.routes) if r.body_field is not None]
    assert len(with_body) >= 4
    assert all(isinstance(r, StrictJsonRoute) for r in with_body), [
        r.path for r in with_body if not isinstance(r, StrictJsonRoute)]
