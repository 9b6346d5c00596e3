"""Service settings, read from the environment (prefix `VITALCAST_`) and validated at start.

`get_settings()` is cached so the running service reads the environment once; tests build
their own `Settings(...)` and hand it to `create_app(settings)` instead of patching globals.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings"]

MIB = 1024 * 1024
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITALCAST_", frozen=True, extra="ignore")

    # directory of checkpoints: <model_dir>/<name>/<version>/model.{safetensors,json}
    model_dir: Path = Path("checkpoints")
    # the model a request without "model" is scored with
    default_model: str = "default"
    # comma-separated keys for the /v1 routes; none configured = every /v1 request is refused
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    # comma-separated keys that may also reload models (they work on user routes too)
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    # observations per patient; more is a 422 (DESIGN.md limit)
    max_observations: int = Field(default=20_000, ge=1)
    # patients per batch request; more is a 422
    max_batch: int = Field(default=1_000, ge=1)
    # request body size; more is a 413, refused while streaming, before parsing
    max_body_bytes: int = Field(default=8 * MIB, ge=1024)
    # level of the service's structured JSON log lines
    log_level: LogLevel = "INFO"
    # bind address of `python -m app`; loopback unless deliberately exposed
    host: str = "127.0.0.1"
    # port of `python -m app`
    port: int = Field(default=8000, ge=1, le=65535)
    # uvicorn worker processes of `python -m app`
    workers: int = Field(default=1, ge=1)
    # torch intra-op threads per process: small, so workers do not oversubscribe the cores
    torch_threads: int = Field(default=1, ge=1)
    # threads that score batches (app.batching): one runs a forward pass while another
    # tensorises or answers
    inference_threads: int = Field(default=2, ge=1, le=16)
    # most patients an inference thread scores in one batch (concurrent requests merged)
    batch_patients: int = Field(default=64, ge=1)
    # ms a batch is held open for more concurrent requests; 0 = score what is queued now
    batch_delay_ms: float = Field(default=0.0, ge=0, le=100)
    # predictions kept for repeated requests (a monitor polling unchanged series); 0 = none
    cache_entries: int = Field(default=4096, ge=0)
    # mounts POST /bench/parse (parse + validate, constant answer) for benchmarks.http only
    benchmark_routes: bool = False

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Environment values are comma-separated; blanks around commas are dropped."""
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
