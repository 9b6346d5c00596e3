"""API-key authentication: `Authorization: Bearer <key>` on every /v1 route.

Keys are compared in constant time against *every* configured key (no early exit), so the
response time says nothing about how much of a key was right or which list it is in. Admin
keys work on user routes; user keys on an admin route get a 403.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Forbidden, Unauthorized
from app.settings import Settings

__all__ = ["AdminKey", "Scope", "UserKey", "require_admin", "require_user", "scope_of"]

Scope = Literal["user", "admin"]
# Declares the scheme in the OpenAPI document; the checks below do the real work so that a
# missing header is a 401 with our error body.
_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


def _matches(candidate: bytes, keys: list[str]) -> bool:
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key.encode("utf-8"))
    return found


def scope_of(authorization: str | None, settings: Settings) -> Scope:
    """The scope an Authorization header grants; Unauthorized when it grants none."""
    if not authorization:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    candidate = key.encode("utf-8", "surrogateescape")
    # Evaluate both lists every time: constant work whatever the key.
    is_admin = _matches(candidate, settings.admin_keys)
    is_user = _matches(candidate, settings.api_keys)
    if is_admin:
        return "admin"
    if is_user:
        return "user"
    raise Unauthorized("invalid API key")


# The dependencies below are `async def` so FastAPI calls them on the event loop rather
# than hopping to its thread pool: they only compare a few short strings.
def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def require_user(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Scope:
    """Dependency for user routes: any valid key."""
    return scope_of(request.headers.get("authorization"), _settings(request))


async def require_admin(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Scope:
    """Dependency for admin routes: an admin key, 403 for a valid user key."""
    scope = scope_of(request.headers.get("authorization"), _settings(request))
    if scope != "admin":
        raise Forbidden("this route needs an admin key")
    return scope


UserKey = Annotated[Scope, Depends(require_user)]
AdminKey = Annotated[Scope, Depends(require_admin)]
