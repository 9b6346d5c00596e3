"""Strict JSON request bodies, parsed once per request.

FastAPI parses a JSON body with `json.loads`, which silently keeps the last of two equal
keys (an observation with two "value"s would be scored with one of them), turns absurd
nesting into an opaque error and converts integers of any length. `StrictJsonRoute` makes
every route of a router parse its body with `parse_json` instead, so what the route sees
is exactly what the strict parser accepted, and a refusal goes through the router's own
error handling: `{"error": {...}}` with 422 under /v1, `{"error": "..."}` with 400 under
/v2 (whose route class builds on this one).

`parse_json` is orjson (several times faster than the standard library) when the body
needs nothing orjson decides differently, and the standard library with a duplicate-key
hook otherwise; both give the same value for every body the fast path takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope

from app.errors import UnsupportedMediaType

logger = logging.getLogger("vitalcast.jsonbody")

__all__ = ["OFF_LOOP_BYTES", "StrictJsonRequest", "StrictJsonRoute", "check_json_content_type",
           "has_long_number", "parse_json"]

# 19 digits in a row may be an integer beyond int64, which orjson reads as a float where
# the standard library keeps the exact int (or refuses it as too long): the slow path.
# Found by mapping every ASCII digit to "9" and every other byte to a space, then looking
# for 19 nines: ~10x faster than the regex \d{19} (20 ms for a 2.7 MB batch body).
_DIGITS_AS_NINES = bytes(ord("9") if ord("0") <= c <= ord("9") else ord(" ") for c in range(256))
_NINETEEN_DIGITS = b"9" * 19


def has_long_number(body: bytes) -> bool:
    """Whether `body` holds 19 or more ASCII digits in a row (as the regex \\d{19} finds)."""
    return _NINETEEN_DIGITS in body.translate(_DIGITS_AS_NINES)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key[:64]!r} in a JSON object: which value is "
                             "meant is ambiguous")
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a repeated key")


def _strict_stdlib(body: bytes) -> Any:
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        if "digits" in str(e):  # int('9' * 5000): "Exceeds the limit (4300 digits)"
            raise ValueError("a number has too many digits") from None
        raise


def _fast(body: bytes) -> Any | None:
    """orjson's value when it is provably the strict parser's, else None.

    A duplicate key is the one thing orjson hides (last wins). Without backslashes there
    are no escapes, so every colon of the body is either after a key or inside a string
    that survives into the value; re-encoding the value drops a duplicate's key and value
    and with them at least one colon. Equal colon counts therefore mean no duplicate.
    """
    if b"\\" in body or has_long_number(body):
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # NaN literals, nesting, lone surrogates...: the standard library decides
    if orjson.dumps(value).count(b":") != body.count(b":"):
        return None
    return value


def parse_json(body: bytes) -> Any:
    """Parse a request body, refusing what a lenient parser would guess at or crash on.

    Raises json.JSONDecodeError for every refusal, its `msg` naming the problem: a
    duplicate key, nesting too deep for the parser, an integer literal too long to
    convert, bytes that are not UTF-8, or a plain syntax error.
    """
    value = _fast(body)
    if value is not None:
        return value
    try:
        return _strict_stdlib(body)
    except json.JSONDecodeError:
        raise
    except (ValueError, UnicodeDecodeError) as e:  # UnicodeDecodeError is a ValueError too
        reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
        raise json.JSONDecodeError(reason, "", 0) from None


def check_json_content_type(content_type: str | None) -> None:
    """Refuse (415) a body that does not say it is JSON: `application/json` or any
    `application/*+json` (FHIR's `application/fhir+json`). FastAPI would hand such a body
    to validation as bytes, and the client would read "Input should be a valid dictionary"
    about a body that may well be valid JSON sent with curl's default form type."""
    media = Message()
    media["content-type"] = content_type or ""
    subtype = media.get_content_subtype()
    if media.get_content_maintype() == "application" and (subtype == "json"
                                                          or subtype.endswith("+json")):
        return
    sent = f"Content-Type {content_type[:64]!r}" if content_type else "no Content-Type"
    raise UnsupportedMediaType(f"body sent with {sent}: send it as JSON with the header "
                               "'Content-Type: application/json'")


FastBody = Callable[[bytes], Any | None]
# A fast decoder (app.plainbody) parses bodies larger than this in a worker thread: the
# event loop goes on receiving and answering other requests, and Arrow parses rows without
# the GIL, beside the inference threads' forward passes. The workers are two threads of
# their own (2 cores: more decodes at once gain nothing), not asyncio's default pool of up
# to cpu + 4 threads: each thread that ran Arrow's reader keeps a malloc arena of its own
# (~15 MiB after a 256-patient batch of rows), and fewer threads keep the peak under bulk
# load lower (rows, 3 in flight: 464-468 against 476 MiB, the same throughput).
OFF_LOOP_BYTES = 64 * 1024
_DECODERS = ThreadPoolExecutor(2, thread_name_prefix="vitalcast-decode")


class StrictJsonRequest(Request):
    """A request whose `json()` is `parse_json`, cached like Starlette's; with `fast`, that
    decoder's value when it gives one (None: not a body it takes)."""

    def __init__(self, scope: Scope, receive: Receive, fast: FastBody | None = None) -> None:
        super().__init__(scope, receive)
        self._fast_body = fast

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = None
            fast = self._fast_body
            if fast is not None:
                value = (await asyncio.get_running_loop().run_in_executor(
                    _DECODERS, _fast_or_none, fast, body)
                         if len(body) > OFF_LOOP_BYTES else _fast_or_none(fast, body))
            self._json = value if value is not None else parse_json(body)
        return self._json


def _fast_or_none(fast: FastBody, body: bytes) -> Any | None:
    """The fast decoder's value, or None when it fails: it only ever speeds up bodies the
    general path takes as well, so a fault in it (a bug, a library that changed) costs
    speed, never a 500. Logged with its kind of error only (no body: patient data)."""
    try:
        return fast(body)
    except Exception as e:  # noqa: BLE001 - any fault: the general path decides
        logger.warning("fast body decoder failed (%s); the body takes the general path",
                       type(e).__name__)
        return None


class StrictJsonRoute(APIRoute):
    """Route class for every router that takes a JSON body (`APIRouter(route_class=...)`).

    A subclass may override `fast_body`: a decoder for the bodies most requests of its
    route send, which gives what `parse_json` would, in a form the route's model validates
    the same way (app.plainbody), and None for every other body."""

    def fast_body(self, body: bytes) -> Any | None:
        """None: every body is `parse_json`'s."""
        return None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        fast = self.fast_body if type(self).fast_body is not StrictJsonRoute.fast_body else None

        takes_body = self.body_field is not None

        async def route(request: Request) -> Response:
            strict = StrictJsonRequest(request.scope, request.receive, fast)
            if takes_body and await strict.body():  # no body: FastAPI says it is missing
                check_json_content_type(request.headers.get("content-type"))
            return await handler(strict)

        return route
