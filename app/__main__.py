"""`python -m app`: serve with uvicorn on VITALCAST_HOST:VITALCAST_PORT (127.0.0.1:8000)."""

from __future__ import annotations

from typing import Any

import uvicorn

from app.settings import get_settings

__all__ = ["log_config", "main"]


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging as JSON lines from its first line ("Started server process" is
    logged before the app's own `configure_logging` runs); the access log stays off."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.observability.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "loggers": {name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
                    for name in ("uvicorn", "uvicorn.error", "vitalcast")},
    }


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "app.main:create_app", factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, log_level=settings.log_level.lower(), access_log=False,
        log_config=log_config(settings.log_level),
    )


if __name__ == "__main__":
    main()
