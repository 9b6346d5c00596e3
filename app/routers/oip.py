"""Open Inference Protocol (KServe V2) REST endpoints under /v2.

Health and server metadata are open, like /healthz; model metadata, model readiness and
inference need the /v1 Bearer key (they reveal and use a clinical model; OIP clients such
as tritonclient and KServe's send custom headers). Every error, including a missing key and
a malformed body, is `{"error": "<message>"}` with 400, 401, 404, 413, 415 or 503, as the protocol
says, rather than the /v1 error object.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app import oip
from app.deps import MetricsDep, RegistryDep, SettingsDep
from app.errors import ServiceError, empty_list_problem
from app.jsonbody import StrictJsonRoute
from app.oip import InferRequest, OIPError, decode_inputs, encode_outputs, model_metadata
from app.registry import ModelRegistry
from app.security import UserKey
from models.checkpoint import Checkpoint
from models.predict import Prediction, score_tensors

__all__ = ["router"]


class OIPErrorBody(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def _describe(exc: RequestValidationError) -> str:
    errors = list(exc.errors())
    error: dict[str, Any] = errors[0] if errors else {}
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    if error.get("type") == "json_invalid":
        return f"body is not valid JSON ({(error.get('ctx') or {}).get('error', 'malformed')})"
    message = empty_list_problem(error) or str(error.get("msg", "invalid request")
                                               ).removeprefix("Value error, ")
    return f"{'.'.join(loc) or 'body'}: {message}"


class _OIPRoute(StrictJsonRoute):
    """Errors as the protocol writes them: `{"error": "..."}`, bad requests as 400; bodies
    parsed strictly (duplicate keys, absurd nesting and numbers are malformed JSON)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                status, kind, message = 400, "invalid_request", _describe(e)
            except OIPError as e:
                status, kind, message = e.status, "invalid_request", e.message
            except ServiceError as e:  # 401 from the key check, 404/503 from the registry
                status, kind, message = e.status, e.kind, e.message
            request.app.state.metrics.count_error(kind, request.scope)
            return JSONResponse({"error": message}, status_code=status)

        return route


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=_OIPRoute)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route: those it can answer, all `{"error": ...}`
    (a GET with path parameters only has no request to be malformed: no 400, 413, 415)."""
    return {status: {"model": OIPErrorBody, "description": _ERROR_TEXT[status]}
            for status in statuses}


_ERROR_TEXT = {
    400: "malformed request: the message names the tensor and the problem",
    401: "missing or unknown API key",
    404: "unknown model or version",
    413: "body over VITALCAST_MAX_BODY_BYTES",
    415: "body not sent as JSON: send 'Content-Type: application/json'",
    503: "the model is on disk but failed to load: the message says why",
}
_ERRORS = _errors(401, 404, 503)
_INFER_ERRORS = _errors(400, 401, 404, 413, 415, 503)


def _served(registry: ModelRegistry, name: str, version: str | None) -> Checkpoint:
    registry.check_not_failed(name)  # 503, as its readiness says
    ckpt = registry.models.get(name)
    if ckpt is None:
        raise OIPError(404, f"unknown model {name[:128]!r}; loaded: "
                       f"{', '.join(registry.models) or 'none'}")
    if version is not None and version != ckpt.version:
        raise OIPError(404, f"version {version[:32]!r} of model {name!r} is not served; "
                       f"serving {ckpt.version}")
    return ckpt


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata(request: Request) -> ServerMetadata:
    try:
        version = importlib.metadata.version("vitalcast")
    except importlib.metadata.PackageNotFoundError:
        version = request.app.version
    # No optional extension (binary tensors, model repository, ...) is implemented.
    return ServerMetadata(name="vitalcast", version=version, extensions=[])


@router.get("/health/live", response_model=Live, summary="Server liveness")
async def live() -> Live:
    return Live(live=True)


@router.get("/health/ready", response_model=Ready, summary="Server readiness: a model is loaded",
            responses={503: {"model": Ready, "description": "no model loaded yet"}})
async def ready(registry: RegistryDep) -> Response:
    if registry.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False}, status_code=503)


async def _metadata(registry: ModelRegistry, name: str, version: str | None) -> ModelMetadata:
    ckpt = _served(registry, name, version)
    return ModelMetadata.model_validate(model_metadata(ckpt, registry.versions(ckpt.name)))


@router.get("/models/{name}", response_model=ModelMetadata, responses=_ERRORS,
            summary="Model metadata: input and output tensors")
async def metadata(name: str, registry: RegistryDep, _: UserKey) -> ModelMetadata:
    return await _metadata(registry, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata,
            responses=_ERRORS, summary="Model metadata of one version")
async def version_metadata(name: str, version: str, registry: RegistryDep,
                           _: UserKey) -> ModelMetadata:
    return await _metadata(registry, name, version)


def _model_ready(registry: ModelRegistry, name: str, version: str | None) -> Response:
    failed = {f.name for f in registry.failures}
    if name not in registry.models and name in failed:  # on disk, but it did not load
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    ckpt = _served(registry, name, version)
    return JSONResponse({"name": ckpt.name, "ready": True})


_READY = {**_ERRORS, 503: {"model": ModelReady, "description": "the model failed to load"}}


@router.get("/models/{name}/ready", response_model=ModelReady, responses=_READY,
            summary="Model readiness")
async def model_ready(name: str, registry: RegistryDep, _: UserKey) -> Response:
    return _model_ready(registry, name, None)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady,
            responses=_READY, summary="Readiness of one model version")
async def version_ready(name: str, version: str, registry: RegistryDep,
                        _: UserKey) -> Response:
    return _model_ready(registry, name, version)


def _infer(body: InferRequest, ckpt: Checkpoint, max_batch: int) -> tuple[dict[str, Any], int]:
    """Decode, score, encode: blocking (numpy, torch), run in a worker thread."""
    if ckpt.task not in ("risk", "effect"):  # as /v1/predict: an effect checkpoint
        raise OIPError(400, f"model {ckpt.name!r} is a {ckpt.task} model; inference here "
                       "needs a risk model (or a what-if model, which carries one)")
    tensors = decode_inputs(body, ckpt, max_batch)
    predictions: list[Prediction] = score_tensors(ckpt, tensors)
    risk = np.array([p.probability for p in predictions])
    if not np.isfinite(risk).all():
        raise OIPError(500, f"model {ckpt.name}/{ckpt.version} returned a non-finite risk")
    return encode_outputs(body, ckpt, predictions), len(predictions)


async def _run(body: InferRequest, name: str, version: str | None, registry: ModelRegistry,
               max_batch: int, metrics: MetricsDep) -> InferResponse:
    ckpt = _served(registry, name, version)  # this request's model, whatever a reload does
    out, n = await run_in_threadpool(_infer, body, ckpt, max_batch)
    metrics.predictions.labels(ckpt.name, ckpt.version).inc(n)
    return InferResponse.model_validate(out)


@router.post("/models/{name}/infer", response_model=InferResponse, responses=_INFER_ERRORS,
             summary="Inference on tensorised stays: risk, los, attention",
             description=oip.__doc__ or "")
async def infer(name: str, body: InferRequest, registry: RegistryDep, settings: SettingsDep,
                metrics: MetricsDep, _: UserKey) -> InferResponse:
    return await _run(body, name, None, registry, settings.max_batch, metrics)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferResponse,
             responses=_INFER_ERRORS, summary="Inference with one model version",
             description=oip.__doc__ or "")
async def version_infer(name: str, version: str, body: InferRequest, registry: RegistryDep,
                        settings: SettingsDep, metrics: MetricsDep,
                        _: UserKey) -> InferResponse:
    return await _run(body, name, version, registry, settings.max_batch, metrics)
