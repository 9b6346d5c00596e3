"""ASGI middleware: request context (id, structured log line, metrics) and the body limit.

All are plain ASGI so that they see every response, including the 413 sent before any
routing and the 500 of an unhandled exception.
"""

from __future__ import annotations

import re
import time
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BodyTooLarge
from app.observability import Metrics, logger

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware", "error_body"]

# A client-sent X-Request-ID is kept only when it cannot smuggle anything into a log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


def error_body(kind: str, message: str, **extra: object) -> bytes:
    return orjson.dumps({"error": {"kind": kind, "message": message, **extra}})


class RequestContextMiddleware:
    """Gives each request an id (echoed as X-Request-ID), then logs and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            # The template, never the raw path: bounded label values, no identifiers.
            label = str(getattr(route, "path", "unmatched"))
            self.metrics.requests.labels(scope["method"], label, str(status)).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            fields: dict[str, object] = {
                "request_id": request_id, "method": scope["method"], "route": label,
                "status": status, "latency_ms": round(elapsed * 1000, 2)}
            kind = scope["state"].get("error_kind")
            if kind is not None:
                fields["error_kind"] = kind
            logger.info("request", extra=fields)


class BodyLimitMiddleware:
    """Refuses bodies over `limit` bytes with a 413, by Content-Length up front or while
    streaming, before the app parses anything; a body within the limit is replayed to it."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def _refuse(self, scope: Scope, send: Send) -> None:
        self.metrics.count_error(BodyTooLarge.kind, scope)
        message = f"request body exceeds the limit of {self.limit} bytes"
        # /v2 (Open Inference Protocol) writes every error as {"error": "<message>"}
        body = orjson.dumps({"error": message}) if scope["path"].startswith("/v2/") \
            else error_body(BodyTooLarge.kind, message)
        await send({"type": "http.response.start", "status": BodyTooLarge.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
