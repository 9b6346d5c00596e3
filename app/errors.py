"""The service's exceptions: one short hierarchy, each class fixing its HTTP status and kind.

Handlers in `app.main` translate them at the boundary into
`{"error": {"kind": ..., "message": ...}}`; messages are stable so clients and tests can
rely on them, and they name the problem a person has to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BodyTooLarge",
    "Forbidden",
    "InvalidRequest",
    "ModelFailure",
    "ModelUnavailable",
    "NoModelLoaded",
    "ServiceError",
    "Unauthorized",
    "UnknownModel",
    "UnsupportedMediaType",
    "empty_list_problem",
]


# What one item of a list field is called where its name without the plural s is not it
# (observations -> observation, patients -> patient).
_ITEM = {"what_if": "plan (or leave what_if out)"}


def empty_list_problem(error: Mapping[str, Any]) -> str | None:
    """A pydantic error about an empty list that needs an item, as a person would say it
    ("empty; send at least one observation"), else None. pydantic's own words ("List
    should have at least 1 item after validation, not 0") describe its validator."""
    ctx = error.get("ctx") or {}
    loc = error.get("loc") or ()
    if error.get("type") != "too_short" or ctx.get("min_length") != 1 \
            or ctx.get("actual_length") != 0 or not loc or not isinstance(loc[-1], str):
        return None
    item = _ITEM.get(loc[-1], loc[-1].removesuffix("s"))
    return f"empty; send at least one {item}"


class ServiceError(Exception):
    """Base class: `status` is the HTTP status, `kind` the machine-readable error kind."""

    status: int = 500
    kind: str = "internal"

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # 0-based position of the offending patient in a batch request, when there is one
        self.index = index

    def in_batch(self, index: int) -> ServiceError:
        """The same error, prefixed with the batch position of the patient it is about."""
        return type(self)(f"patients[{index}]: {self.message}", index=index)


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but its content cannot be scored (422)."""

    status = 422
    kind = "invalid_request"


class UnknownModel(ServiceError):
    """The request names a model the registry does not hold (404)."""

    status = 404
    kind = "unknown_model"


class NoModelLoaded(ServiceError):
    """No model is loaded yet, or the default model is missing (503)."""

    status = 503
    kind = "no_model"


class ModelUnavailable(ServiceError):
    """The named model is on disk but its checkpoint failed to load (503): not unknown, and
    not a client's mistake; an operator fixes the checkpoint and reloads."""

    status = 503
    kind = "model_unavailable"


class Unauthorized(ServiceError):
    """Missing, malformed or unknown API key (401)."""

    status = 401
    kind = "unauthorized"


class Forbidden(ServiceError):
    """A valid key without the scope the route needs (403)."""

    status = 403
    kind = "forbidden"


class BodyTooLarge(ServiceError):
    """Request body over `VITALCAST_MAX_BODY_BYTES` (413)."""

    status = 413
    kind = "body_too_large"


class UnsupportedMediaType(ServiceError):
    """A body sent as something other than JSON (form data, plain text, no type) (415)."""

    status = 415
    kind = "unsupported_media_type"


class ModelFailure(ServiceError):
    """The model produced something unusable (non-finite output): a server fault (500)."""

    status = 500
    kind = "model_failure"
