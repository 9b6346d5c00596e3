"""Benchmark-only route (VITALCAST_BENCHMARK_ROUTES=1; never mounted otherwise).

`POST /bench/parse` is the web framework's own limit for `/v1/predict`: the same
middleware, the same API-key check and the same `PredictRequest` parse and validation,
then a constant answer. `benchmarks.http` drives both routes with the same body.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.jsonbody import StrictJsonRoute
from app.schemas import PredictRequest
from app.security import UserKey

__all__ = ["router"]

router = APIRouter(prefix="/bench", tags=["benchmark"], include_in_schema=False,
                   route_class=StrictJsonRoute)


@router.post("/parse")
async def parse_only(request: PredictRequest, _: UserKey) -> dict[str, Any]:
    return {"ok": True, "observations": len(request.observations)}
