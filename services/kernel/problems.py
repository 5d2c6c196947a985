"""The error tree, shared by every service: domain and adapter code raise `Problem` subclasses,
each naming its HTTP status and title; `vicino.services.runtime.http_problems` renders them (and
FastAPI's own validation errors) as RFC 9457 `application/problem+json`.
"""
from __future__ import annotations

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class InvalidInput(Problem):
    status = 422
    title = "Invalid input"


class Unauthorized(Problem):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, **kw: Any):
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class Forbidden(Problem):
    status = 403
    title = "Forbidden"


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
