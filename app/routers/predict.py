"""POST /v1/predict and /v1/predict/batch."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Request, Response

from app.deps import BatcherDep, MetricsDep, RegistryDep, SettingsDep
from app.errors import InvalidRequest, ServiceError
from app.jsonbody import StrictJsonRoute
from app.schemas import (
    EXAMPLE_ISO_REQUEST,
    EXAMPLE_REQUEST,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
)
from app.security import UserKey
from app.service import Answer, Job, prepare, prepare_batch

__all__ = ["router"]

router = APIRouter(prefix="/v1/predict", tags=["predict"], route_class=StrictJsonRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (401, "missing or unknown API key"),
        (404, "unknown model"),
        (413, "body over VITALCAST_MAX_BODY_BYTES"),
        (415, "body not sent as JSON: send 'Content-Type: application/json'"),
        (422, "invalid request: the message names the field and the problem"),
        (503, "no model loaded, or the model named failed to load (the message says why)"),
    )
}
EXAMPLES = {
    "hours": {"summary": "times in hours since admission", "value": EXAMPLE_REQUEST},
    "iso": {"summary": "ISO-8601 times with offset", "value": EXAMPLE_ISO_REQUEST},
}


async def _score(jobs: list[Job], batcher: BatcherDep, metrics: MetricsDep
                 ) -> list[Answer]:
    """Score on the inference thread, with whatever other requests are waiting."""
    responses = []
    for i, outcome in enumerate(await batcher.submit(jobs)):
        if isinstance(outcome, ServiceError):
            raise outcome.in_batch(i) if len(jobs) > 1 else outcome
        responses.append(outcome)
    scored = Counter((r["model"]["name"], r["model"]["version"]) for r in responses)
    for (name, version), count in scored.items():  # a batch has one model or a few
        metrics.predictions.labels(name, version).inc(count)
    return responses


Contributions = Annotated[bool, Query(
    description="false: leave out explanation.variables (null). Their integrated gradients "
                "cost several forward and backward passes per patient; bulk scoring rarely "
                "needs them.")]


def _json(body: Answer | dict[str, list[Answer]]) -> Response:
    """The answer's JSON (the documented response model's, field for field), encoded by
    orjson: FastAPI would validate it into the response model and dump it again."""
    return Response(orjson.dumps(body), media_type="application/json")


@router.post("", response_model=PredictResponse, responses=ERRORS,
             summary="Risk, prognosis and explanation for one patient")
async def predict_one(
    request: Annotated[PredictRequest, Body(openapi_examples=EXAMPLES)],
    registry: RegistryDep, settings: SettingsDep, metrics: MetricsDep, batcher: BatcherDep,
    _: UserKey, contributions: Contributions = True,
) -> Response:
    ckpt = registry.get(request.model)  # this request's model, whatever a reload does next
    job = prepare(request, ckpt, settings.max_observations, contributions)
    (response,) = await _score([job], batcher, metrics)
    return _json(response)


class _BatchRoute(StrictJsonRoute):
    """Plain bulk bodies decoded straight into columns (app.plainbody); any other body is
    parsed and validated as on every route."""

    def fast_body(self, body: bytes) -> Any | None:
        # Arrow (app.plainbody: 35-65 MiB resident, the more the fresher the install's pages
        # in the page cache) loads with the first batch body: a service that answers one
        # patient at a time never carries it.
        from app.plainbody import decode_plain_batch
        return decode_plain_batch(body)


# Status logged and counted for a batch whose client left before its answer (nginx's
# "client closed request"); nobody reads the response itself.
CLIENT_CLOSED = 499


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects. The body has been read: the server's next
    message for this request is its disconnect (or the end of the response)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def predict_batch(
    batch: BatchRequest, request: Request, registry: RegistryDep, settings: SettingsDep,
    metrics: MetricsDep, batcher: BatcherDep, _: UserKey, contributions: Contributions = True,
) -> Response:
    if len(batch.patients) > settings.max_batch:
        raise InvalidRequest(f"patients: {len(batch.patients)} patients exceed the limit of "
                             f"{settings.max_batch} per batch")
    jobs = prepare_batch(batch.patients, lambda r: registry.get(r.model),
                         settings.max_observations, contributions)
    # A bulk batch takes a while; if its client goes away meanwhile (a timeout, a cancelled
    # job), its chunks still queued are dropped rather than scored for nobody.
    # Best effort: a disconnect the server does not report to this request (a later
    # request pipelined on the connection) leaves the batch scored as before.
    scoring = asyncio.ensure_future(_score(jobs, batcher, metrics))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((scoring, gone), return_when=asyncio.FIRST_COMPLETED)
        if not scoring.done() and gone.exception() is None:  # the client left
            return Response(status_code=CLIENT_CLOSED)
        # (a watcher that failed is no disconnect: the client still waits for its answer)
        return _json({"results": await scoring})
    finally:
        gone.cancel()
        scoring.cancel()  # nothing once it is done; else the client left or this was cancelled


router.add_api_route("/batch", predict_batch, methods=["POST"], response_model=BatchResponse,
                     responses=ERRORS, route_class_override=_BatchRoute,
                     summary="Many patients in one request, answered in the same order")
