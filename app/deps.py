"""Typed dependencies: what a route needs from the app, resolved per request.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
per dependency per request for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.batching import Batcher
from app.observability import Metrics
from app.registry import ModelRegistry
from app.settings import Settings

__all__ = ["BatcherDep", "MetricsDep", "RegistryDep", "SettingsDep"]


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_batcher(request: Request) -> Batcher:
    batcher: Batcher = request.app.state.batcher
    return batcher


BatcherDep = Annotated[Batcher, Depends(get_batcher)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
