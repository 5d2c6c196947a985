"""RFC 9457 problem+json at the HTTP edge: renders the kernel's `Problem` tree, FastAPI's own
validation errors, Redis being away (503, retry) and anything unexpected (500, logged), so that
every answer of every service that is not a success says what was wrong.
"""
from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from redis.exceptions import (ClusterDownError, NoPermissionError, OutOfMemoryError, ReadOnlyError, ResponseError,
                              TryAgainError)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..kernel.problems import PROBLEM_MEDIA_TYPE, Problem, describe_validation_errors

log = logging.getLogger("vicino.problems")


def _route_of(request: Request) -> str:
    """The route's template (`/v1/customers/{customer_id}`), never the path itself: a path names
    customers and devices, and logs must not."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched route"


# the error codes of a Redis that is there but refuses to serve: (what it means, Retry-After s)
_REFUSALS = {"READONLY": ("a replica, during a failover", 1), "OOM": ("out of memory: maxmemory reached", 30),
             "NOAUTH": ("authentication required", 30), "NOPERM": ("no permission for this user", 30),
             "WRONGPASS": ("authentication failed", 30), "LOADING": ("still loading its data", 2),
             "MASTERDOWN": ("the master is down", 1), "NOREPLICAS": ("not enough replicas", 1)}


def redis_refusal(exc: Exception) -> tuple[str, int] | None:
    """A Redis refusal from its error class (redis-py strips the code) or its code (also inside a
    script's error), else None."""
    for cls, code in ((ReadOnlyError, "READONLY"), (OutOfMemoryError, "OOM"), (NoPermissionError, "NOPERM")):
        if isinstance(exc, cls):
            return _REFUSALS[code]
    text = str(exc)
    if text.startswith("UNBLOCKED") and "replica" in text:  # a blocked read cut short by a failover
        return _REFUSALS["READONLY"]
    for code, refusal in _REFUSALS.items():
        if text.startswith(code) or f" {code} " in text or f"-{code} " in text or f"{code} command" in text:
            return refusal
    return None


def problem_response(status: int, title: str, detail: str, *, instance: str | None = None,
                     errors: list | None = None, headers: dict | None = None, code: str | None = None) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if code:
        body["code"] = code
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, instance=request.url.path,
                                errors=exc.errors, headers=exc.headers, code=exc.code)

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
        log.warning("Redis unavailable on %s %s: %s", request.method, _route_of(request), type(exc).__name__)
        return problem_response(503, "Service unavailable", f"Redis is unavailable ({type(exc).__name__}); "
                                "nothing was lost, retry shortly", instance=request.url.path,
                                headers={"Retry-After": "1"})

    for redis_error in (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError):
        app.add_exception_handler(redis_error, _redis_away)

    async def _redis_refuses(request: Request, exc: Exception) -> Response:
        # Redis answers but will not write: a replica after a failover (READONLY), maxmemory
        # reached (OOM), a missing permission (NOAUTH, NOPERM), still loading (LOADING). Not the
        # client's fault, and a script refused at its first write wrote nothing: 503, retry
        refusal = redis_refusal(exc)
        if refusal is None:
            return await _unexpected(request, exc)
        what, retry_s = refusal
        log.error("Redis refused on %s %s: %s", request.method, _route_of(request), str(exc)[:200])
        return problem_response(503, "Service unavailable", f"Redis refused the command ({what}); nothing of this "
                                "request was written, retry later", instance=request.url.path,
                                headers={"Retry-After": str(retry_s)})

    for refused in (ReadOnlyError, OutOfMemoryError, NoPermissionError, ResponseError):
        app.add_exception_handler(refused, _redis_refuses)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, _route_of(request))
        return problem_response(500, "Internal error", "an unexpected error occurred; it has been logged",
                                instance=request.url.path)


# --- how OpenAPI documents these answers (each router's `responses=`) ---

class ProblemOut(BaseModel):
    """RFC 9457 problem details: the body of every error answer (`application/problem+json`)."""
    type: str = Field("about:blank", description="always about:blank")
    title: str
    status: int
    detail: str
    # documented only (never built): a plain optional string, as it is inlined in every error answer
    code: str = Field(None, description="a refusal's stable reason, for programs (`detail` is for people): every "
                      "401 and 403 has one, e.g. `token_revoked`; README, \"Refusal codes\"")
    instance: str | None = Field(None, description="the request path")
    errors: list[dict] | None = Field(None, description="one item per invalid field, when there are several")


PROBLEM_SCHEMA = ProblemOut.model_json_schema()


def problem(description: str) -> dict:
    """An OpenAPI `responses=` entry for an error answered as problem+json."""
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}}}


# the errors of any route with a JSON body
BODY_PROBLEMS = {400: problem("body is not valid JSON"), 413: problem("body too large"),
                 415: problem("body is not application/json")}
