"""GET /healthz (liveness), /readyz (a model is loaded), /metrics (Prometheus). No auth."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import MetricsDep, RegistryDep
from app.errors import NoModelLoaded
from app.schemas import ErrorResponse, Health, Readiness

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, summary="Readiness: a model is loaded",
            responses={503: {"model": ErrorResponse, "description": "no model loaded yet"}})
async def readyz(registry: RegistryDep) -> Readiness:
    models = registry.models
    if not models:
        raise NoModelLoaded("not ready: no model is loaded")
    return Readiness(models=[f"{c.name}/{c.version}" for c in models.values()])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
