"""Structured logs and Prometheus metrics.

Log lines are single JSON objects. The service logs what an operator needs to follow a
request — request id, method, route template, status, latency — and never a body, a
patient value, a patient id or a key: routes are logged by their template
(`/v1/models/{name}`), never by the raw path or query.

Metrics live in a registry per app (not prometheus_client's global one) so that several
apps in one process, as in tests, do not collide.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LOG_FIELDS", "JsonFormatter", "Metrics", "configure_logging", "logger"]

logger = logging.getLogger("vitalcast")
# The `extra=` fields a log line may carry; anything else passed as extra is dropped, so a
# careless call site cannot leak a request body into the log.
LOG_FIELDS = (
    "request_id", "method", "route", "status", "latency_ms", "error_kind", "model", "version",
    "n_patients", "models", "errors", "exception", "where",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the allowed extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in LOG_FIELDS:
            if field in record.__dict__:
                line[field] = record.__dict__[field]
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the service's loggers (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # "models": the model code's warnings (a graph that failed to trace, attributions
    # short of completeness) as JSON lines too, not Python's bare last-resort lines.
    for name in ("vitalcast", "models", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.setLevel(level)
        log.propagate = False
    # Our middleware logs every request; uvicorn's access line would log the raw path.
    logging.getLogger("uvicorn.access").disabled = True


class Metrics:
    """The service's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vitalcast_requests_total", "HTTP requests by method, route template and status",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "vitalcast_request_latency_seconds", "HTTP request latency by route template",
            ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.predictions = Counter(
            "vitalcast_predictions_total", "patients scored, by model name and version",
            ["model", "version"], registry=self.registry)
        self.errors = Counter(
            "vitalcast_errors_total", "error responses by kind", ["kind"],
            registry=self.registry)
        self.models_loaded = Gauge(
            "vitalcast_models_loaded", "models the registry serves", registry=self.registry)
        self.load_failures = Counter(
            "vitalcast_model_load_failures_total", "checkpoints that failed to load",
            registry=self.registry)

    def count_error(self, kind: str, scope: MutableMapping[str, Any]) -> None:
        """Count an error answer by kind, and mark the request's scope with it so that the
        request's log line says why it failed (`error_kind`)."""
        self.errors.labels(kind).inc()
        scope.setdefault("state", {})["error_kind"] = kind
