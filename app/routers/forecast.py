"""POST /v1/forecast: the next hours of a patient's vitals and labs, from a forecast model
(the seq2seq encoder-decoder `python -m training.train --task forecast` publishes)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from app.deps import MetricsDep, RegistryDep, SettingsDep
from app.errors import InvalidRequest
from app.jsonbody import StrictJsonRoute
from app.routers.predict import ERRORS, EXAMPLES
from app.schemas import ForecastResponse, PredictRequest
from app.security import UserKey
from app.service import forecast, prepare

__all__ = ["DEFAULT_FORECAST_MODEL", "router"]

DEFAULT_FORECAST_MODEL = "forecast"  # the name scripts/retrain publishes its forecaster under

router = APIRouter(prefix="/v1/forecast", tags=["forecast"], route_class=StrictJsonRoute)


@router.post("", response_model=ForecastResponse, responses=ERRORS,
             summary="The next hours of a patient's vitals and labs")
async def forecast_one(
    request: Annotated[PredictRequest, Body(openapi_examples=EXAMPLES)],
    registry: RegistryDep, settings: SettingsDep, metrics: MetricsDep, _: UserKey,
) -> Response:
    """The same body as /v1/predict; `model` names a forecast model (default
    "forecast"). Each of the model's target variables is forecast for the grid bins after
    the last bin holding an observation, in its catalogue unit."""
    if request.what_if:
        raise InvalidRequest("what_if: plans are answered by /v1/predict with a what-if "
                             "model, not by a forecast")
    ckpt = registry.get(request.model or DEFAULT_FORECAST_MODEL)
    job = prepare(request, ckpt, settings.max_observations, explain=False, forecast=True)
    answer = await run_in_threadpool(forecast, job)  # torch: off the event loop
    metrics.predictions.labels(ckpt.name, ckpt.version).inc()
    return Response(orjson.dumps(answer), media_type="application/json")
