"""GET /v1/models, GET /v1/models/{name}, POST /v1/models/reload (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import MetricsDep, RegistryDep
from app.errors import UnknownModel
from app.jsonbody import StrictJsonRoute
from app.registry import ModelRegistry
from app.schemas import ErrorResponse, GridInfo, LoadFailure, ModelInfo, ModelList
from app.security import AdminKey, UserKey
from models.checkpoint import Checkpoint

__all__ = ["router"]

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=StrictJsonRoute)

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or unknown API key"},
}


def _info(ckpt: Checkpoint, registry: ModelRegistry) -> ModelInfo:
    return ModelInfo(
        name=ckpt.name, version=ckpt.version, versions=registry.versions(ckpt.name),
        default=ckpt.name == registry.default_model, architecture=ckpt.config.arch,
        bidirectional=ckpt.config.bidirectional, task=ckpt.task,
        features=list(ckpt.normalizer.features),
        static_features=list(ckpt.normalizer.static_features),
        grid=GridInfo(step_hours=ckpt.grid.step_hours, n_steps=ckpt.grid.n_steps),
        temperature=ckpt.temperature, metrics=ckpt.metrics, created=ckpt.created,
        code_version=ckpt.code_version, fingerprint=ckpt.fingerprint,
    )


def _listing(registry: ModelRegistry) -> ModelList:
    models = registry.models  # one snapshot for the whole answer
    return ModelList(
        default_model=registry.default_model,
        models=[_info(c, registry) for c in models.values()],
        errors=[LoadFailure(name=f.name, version=f.version, message=f.message)
                for f in registry.failures],
    )


@router.get("", response_model=ModelList, responses=_AUTH, summary="What is loaded")
async def list_models(registry: RegistryDep, _: UserKey) -> ModelList:
    return _listing(registry)


@router.post("/reload", response_model=ModelList, summary="Re-scan the model dir (admin)",
             responses={**_AUTH, 403: {"model": ErrorResponse,
                                       "description": "key without the admin scope"}})
async def reload_models(registry: RegistryDep, metrics: MetricsDep, _: AdminKey) -> ModelList:
    # Synchronous for the caller (answers with what is now loaded), off the event loop.
    loaded, failures = await run_in_threadpool(registry.load)
    metrics.models_loaded.set(len(loaded))
    if failures:
        metrics.load_failures.inc(len(failures))
    return _listing(registry)


@router.get("/{name}", response_model=ModelInfo, summary="One loaded model",
            responses={**_AUTH, 404: {"model": ErrorResponse, "description": "unknown model"},
                       503: {"model": ErrorResponse, "description": "the model is on disk "
                             "but failed to load: the message says why"}})
async def get_model(name: str, registry: RegistryDep, _: UserKey) -> ModelInfo:
    registry.check_not_failed(name)
    ckpt = registry.models.get(name)
    if ckpt is None:
        raise UnknownModel(f"unknown model {name[:128]!r}; loaded: "
                           f"{', '.join(registry.models) or 'none'}")
    return _info(ckpt, registry)
