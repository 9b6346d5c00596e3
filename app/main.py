"""The app factory: settings, registry, middleware, routers and error handlers.

`create_app(settings)` builds a fresh app (tests build several, each with its own settings,
registry and metrics); models are loaded in `lifespan`, never at import time.
"""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from app.batching import Batcher
from app.cache import PredictionCache
from app.errors import ServiceError, empty_list_problem
from app.memory import release_free_memory
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware, error_body
from app.observability import Metrics, configure_logging, logger
from app.registry import ModelRegistry
from app.routers import bench, fhir, forecast, health, models, oip, predict
from app.service import answer_cached, predict_each, warm_up
from app.settings import Settings, get_settings

__all__ = ["create_app"]

DESCRIPTION = """Calibrated in-hospital mortality risk, expected length of stay and an
explanation (attention over time, signed per-variable contributions) from an ICU patient's
vital-sign and lab-value series. Every `/v1` route needs `Authorization: Bearer <key>`."""


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"kind": kind, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": body}, status_code=status)


def _loc(loc: Sequence[int | str]) -> str:
    """("body", "patients", 3, "observations", 0, "value") -> patients[3].observations[0].value"""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _problem(error: dict[str, Any]) -> str:
    kind, msg = error.get("type", ""), str(error.get("msg", ""))
    if kind == "json_invalid":  # shown after "body: "
        reason = (error.get("ctx") or {}).get("error", "malformed JSON")
        return f"not valid JSON ({reason})"
    if (empty := empty_list_problem(error)) is not None:
        return empty
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    return msg.removeprefix("Value error, ")


def _model_variables(error: dict[str, Any], body: Any, registry: ModelRegistry,
                     default: str) -> str:
    """What to add to an unknown variable's refusal: the variables of the model the request
    (or the batch's patient) asks for, the default when it names none. The schema refusing
    the name does not know the model; listing every catalogue name would bury the few the
    model reads."""
    loc = tuple(error.get("loc", ()))
    request = body
    if loc[:2] == ("body", "patients") and len(loc) > 2 and isinstance(loc[2], int):
        patients = body.get("patients") if isinstance(body, dict) else None
        request = patients[loc[2]] if isinstance(patients, list) and \
            loc[2] < len(patients) else None
    name = request.get("model") if isinstance(request, dict) else None
    ckpt = registry.models.get(name if isinstance(name, str) else default)
    if ckpt is None:
        return "; GET /v1/models lists the variables each model uses"
    return f"; model {ckpt.name!r} uses: {', '.join(ckpt.normalizer.features)}"


def _validation_response(exc: RequestValidationError, registry: ModelRegistry,
                         default: str) -> JSONResponse:
    """The 422 of a refused body; `default` is the model the route uses when the body names
    none (the service's default model, or /v1/forecast's forecaster)."""
    errors = list(exc.errors())
    # A JSON syntax error's loc is ("body", character offset): the body is what is wrong.
    details = [{"loc": "body" if e.get("type") == "json_invalid" else _loc(e.get("loc", ())),
                "message": _problem(e) + (_model_variables(e, exc.body, registry, default)
                                          if e.get("type") == "unknown_variable" else "")}
               for e in errors]
    shown = "; ".join(f"{d['loc']}: {d['message']}" for d in details[:3])
    if len(details) > 3:
        shown += f" (and {len(details) - 3} more)"
    index = None
    loc = tuple(errors[0].get("loc", ())) if errors else ()
    if loc[:2] == ("body", "patients") and len(loc) > 2 and isinstance(loc[2], int):
        index = loc[2]
    return _error(422, "invalid_request", shown or "invalid request", index=index,
                  details=details[:20])


def _install_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.count_error(exc.kind, request.scope)
        return _error(exc.status, exc.kind, exc.message, index=exc.index)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.count_error("invalid_request", request.scope)
        registry: ModelRegistry = request.app.state.registry
        default = (forecast.DEFAULT_FORECAST_MODEL if request.scope.get("path") == "/v1/forecast"
                   else registry.default_model)
        return _validation_response(exc, registry, default)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.count_error(kind, request.scope)
        return _error(exc.status_code, kind, str(exc.detail))


class _CatchAll:
    """Last line: an unhandled exception becomes a 500 with the request id, and is logged by
    type and code location only — its message may quote patient values."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if scope["type"] != "http":
                raise
            frame = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f"{frame[0].filename}:{frame[0].lineno}" if frame else "?"
            request_id = scope.get("state", {}).get("request_id", "")
            logger.error("unhandled error", extra={
                "request_id": request_id, "exception": type(exc).__name__, "where": where})
            self.metrics.count_error("internal", scope)
            if not started:
                body = error_body("internal", f"internal error (request id {request_id})")
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})


def _without_default_422(app: FastAPI) -> None:
    """Leave FastAPI's default 422 `HTTPValidationError` out of the OpenAPI schema: no route
    answers it. A /v1 validation error is the `ErrorResponse` its route documents, a /v2 one
    a 400 `{"error": ...}`, and a route with path parameters only (GET /v1/models/{name})
    has nothing to fail validation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    content = operation.get("responses", {}).get("422", {}).get("content", {})
                    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                    if ref.endswith("/HTTPValidationError"):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    torch, pandas and the loaded models leave ~250,000 long-lived objects that every full
    collection would walk, and a request allocates thousands of short-lived ones (an object
    per observation), which at the default thresholds trigger collections within a request:
    validating a 256-patient batch took 2.6x as long with them. Freezing moves what exists at
    start-up out of the collector's view; a higher first threshold collects less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    registry = ModelRegistry(settings.model_dir, settings.default_model, warm_up=warm_up)
    cache = PredictionCache(settings.cache_entries)
    batcher = Batcher(partial(predict_each, cache=cache), settings.batch_patients,
                      settings.batch_delay_ms / 1000, answer=partial(answer_cached, cache=cache),
                      threads=settings.inference_threads, after_bulk=release_free_memory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        # Few intra-op threads: requests run in parallel threads/workers on few cores.
        torch.set_num_threads(settings.torch_threads)
        if not settings.api_keys and not settings.admin_keys:
            logger.warning("no API keys configured: every /v1 request will get a 401")
        registry.load()
        metrics.models_loaded.set(len(registry.models))
        metrics.load_failures.inc(len(registry.failures))
        _tune_gc()
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="vitalcast", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.cache = cache
    _install_handlers(app, metrics)
    for router in (predict.router, forecast.router, fhir.router, models.router, health.router,
                   oip.router):
        app.include_router(router)
    if settings.benchmark_routes:  # off by default: a framework baseline for benchmarks
        app.include_router(bench.router)
    _without_default_422(app)
    # Added last = outermost: context (id, log, metrics) sees the 413 and the catch-all 500.
    # JSON bodies are parsed strictly, once, by each router's route class (app.jsonbody).
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(_CatchAll, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    logging.getLogger("vitalcast").debug("app created")
    return app
