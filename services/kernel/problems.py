"""The error tree and its RFC 9457 problem+json rendering, shared by every service.

Domain and adapter code raise `Problem` subclasses; the HTTP edge turns any of them, and
FastAPI's own validation errors, into `application/problem+json` with a `detail` that says
what was wrong. Anything else is a bug and is logged, still answered as problem+json.
"""
from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("vicino.problems")

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


def problem_response(status: int, title: str, detail: str, *, instance: str | None = None,
                     errors: list | None = None, headers: dict | None = None) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


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


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, instance=request.url.path,
                                errors=exc.errors, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        detail, items = describe_validation_errors(list(exc.errors()))
        return problem_response(422, "Invalid input", detail, instance=request.url.path, errors=items)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request"}
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return problem_response(exc.status_code, titles.get(exc.status_code, "Error"), detail,
                                instance=request.url.path, headers=getattr(exc, "headers", None))

    async def _redis_away(request: Request, exc: Exception) -> Response:
        # Redis restarting, a failover, a network cut: nothing was half-written (every write is
        # one script), so the client is told to retry rather than shown a server error
        log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(503, "Service unavailable", f"Redis is unavailable ({type(exc).__name__}); "
                                "nothing was lost, retry shortly", instance=request.url.path,
                                headers={"Retry-After": "1"})

    for redis_error in (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError):
        app.add_exception_handler(redis_error, _redis_away)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal error", "an unexpected error occurred; it has been logged",
                                instance=request.url.path)
