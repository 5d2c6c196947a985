"""The error tree, shared by every service: domain and adapter code raise `Problem` subclasses,
each naming its HTTP status and title; `vicino.services.runtime.http_problems` renders them (and
FastAPI's own validation errors) as RFC 9457 `application/problem+json`.

A refusal also carries a stable `code` (an RFC 9457 extension member): clients switch on it,
never on the words of `detail`, which are for people and may change. Every 401 and 403 has one.
"""
from __future__ import annotations

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"


# The `code` of a refusal: what the client should do about it. Part of the public API (README,
# "Refusal codes"): a code may be added, never renamed or given another meaning.
TOKEN_EXPIRED = "token_expired"
TOKEN_REVOKED = "token_revoked"
TOKEN_ALREADY_REFRESHED = "token_already_refreshed"
TOKEN_INVALID = "token_invalid"
CREDENTIALS_MISSING = "credentials_missing"
FORBIDDEN_ROLE = "forbidden_role"
DEVICE_TOKEN_REQUIRED = "device_token_required"
NOT_OWN_DEVICE = "not_own_device"
NOT_OWN_CUSTOMER = "not_own_customer"
CONSENT_REQUIRED = "consent_required"

REFUSAL_CODES = {
    TOKEN_EXPIRED: "401: the device token expired; the app backend registers the device again",
    TOKEN_REVOKED: "401: the device token was replaced by a newer registration, refreshed past its grace "
                   "period, or the device was removed; register again (or stay signed out)",
    TOKEN_ALREADY_REFRESHED: "401: only the newest device token may be refreshed; this one still works for "
                             "other calls until its grace ends",
    TOKEN_INVALID: "401: not a credential of this deployment (malformed, bad signature, unknown or revoked key)",
    CREDENTIALS_MISSING: "401: no Authorization: Bearer header",
    FORBIDDEN_ROLE: "403: the credential is valid but lacks the role (a device token on a key's route)",
    DEVICE_TOKEN_REQUIRED: "403: only a device token may do this (an API key may not)",
    NOT_OWN_DEVICE: "403: a device token acting for another device (or its deliveries)",
    NOT_OWN_CUSTOMER: "403: a device token acting for another customer",
    CONSENT_REQUIRED: "409: the customer has not consented to location processing",
}


class Problem(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict | None = None,
                 code: str | None = None):
        super().__init__(detail)
        assert code is None or code in REFUSAL_CODES, code  # a code is documented before it is used
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.code = code


class InvalidInput(Problem):
    status = 422
    title = "Invalid input"


class Unauthorized(Problem):
    """Who is calling is unknown or no longer valid; `code` (required) says which way."""
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, *, code: str, **kw: Any):
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, code=code, **kw)


class Forbidden(Problem):
    """The caller is known but may not do this; `code` (required) says why."""
    status = 403
    title = "Forbidden"

    def __init__(self, detail: str, *, code: str, **kw: Any):
        super().__init__(detail, code=code, **kw)


class NotFound(Problem):
    status = 404
    title = "Not found"


class Conflict(Problem):
    status = 409
    title = "Conflict"


class PayloadTooLarge(Problem):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(Problem):
    status = 415
    title = "Unsupported media type"


def require_json_content_type(content_type: str | None) -> None:
    """A body sent as something else than JSON is a client mistake worth naming (no header: fine)."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type is {media!r}; send the body as application/json")


class Unavailable(Problem):
    status = 503
    title = "Service unavailable"


def _loc(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def describe_validation_errors(errors: list[dict]) -> tuple[str, list[dict]]:
    items = []
    for e in errors:
        where = _loc(e.get("loc", ()))
        msg = e.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        items.append({"field": where, "message": msg})
    head = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    if len(items) > 5:
        head += f"; and {len(items) - 5} more"
    return head, items


def invalid_input(error) -> InvalidInput:
    """The 422 of a pydantic `ValidationError`: a summary, and each invalid field with its message."""
    detail, items = describe_validation_errors(list(error.errors()))
    return InvalidInput(detail, errors=items)
