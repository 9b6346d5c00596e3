"""`python -m app`: serve with uvicorn on VITALCAST_HOST:VITALCAST_PORT (127.0.0.1:8000)."""

from __future__ import annotations

import uvicorn

from app.settings import get_settings

__all__ = ["main"]


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "app.main:create_app", factory=True, host=settings.host, port=settings.port,
        workers=settings.workers, log_level=settings.log_level.lower(), access_log=False,
    )


if __name__ == "__main__":
    main()
