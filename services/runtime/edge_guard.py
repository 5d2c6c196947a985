"""The first thing a request meets: who is calling, whether they are over their rate limit, and
how large a body they may send, all decided before one byte of the body is read.

- Every `/v1/` route needs a credential. The bearer is resolved here (the admin token, an API
  key: one Redis read, a device token: an HMAC, no I/O); a request without a valid one is a 401
  with its body unread. Health, metrics and the OpenAPI pages stay open.
- The caller's rate limit (per device token, per API key: `rate_limit`) is checked next: 429.
- The body is counted as it arrives, and the answer is a 413 the moment it passes the limit: a
  declared `Content-Length` over it is refused at once, a chunked body is never buffered here.
  The bulk limit of a route applies only to a caller that holds one of its roles; everyone else
  gets the default.

Refusals before the body close the connection (`Connection: close`): the server does not
drain an upload it refused.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis.exceptions import ClusterDownError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..kernel.auth import Principal
from ..kernel.problems import Problem
from ..kernel.rate_limits import DEVICE_LOCATIONS, DEVICE_TOKEN, KEY, device_class
from .api_keys import EDGE_PRINCIPAL
from .http_problems import problem_response, redis_refusal

log = logging.getLogger("vicino.edge")

NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)


@dataclass(frozen=True)
class BulkLimit:
    """A route's larger body limit, for callers holding one of `roles` (admin always)."""
    max_bytes: int
    roles: frozenset[str]


class EdgeGuard:
    def __init__(self, app, default_limit: int, bulk: dict[tuple[str, str], BulkLimit] | None = None) -> None:
        self.app = app
        self.default_limit = default_limit
        self.bulk = bulk or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method = scope["method"]
        path = scope["path"]
        limit = self.default_limit
        if path.startswith("/v1/"):
            container = getattr(getattr(scope.get("app"), "state", None), "container", None)
            access = getattr(container, "access", None)
            if access is not None:  # None: not started yet, or a process without keys (its routes decide)
                authorization = None
                for name, value in scope["headers"]:
                    if name == b"authorization":
                        authorization = value.decode("latin-1")
                        break
                clock = getattr(container, "clock", None)
                try:
                    principal = await access.principal(authorization, clock.now() if clock else time.time())
                except Problem as e:
                    return await _refuse(scope, send, e.status, e.title, e.detail, e.headers, close=True)
                except RedisError as e:  # reading an API key: the same 503 as the routes answer
                    refusal = None if isinstance(e, _REDIS_AWAY) else redis_refusal(e)
                    if refusal is None and not isinstance(e, _REDIS_AWAY):
                        raise
                    what, retry_s = ((f"refusing ({refusal[0]})", refusal[1]) if refusal
                                     else (f"unavailable ({type(e).__name__})", 1))
                    log.warning("Redis %s while authenticating %s %s", what, method, path)
                    return await _refuse(scope, send, 503, "Service unavailable",
                                         f"Redis is {what}; nothing was done, retry shortly",
                                         {"Retry-After": str(retry_s)}, close=True)
                scope.setdefault("state", {})[EDGE_PRINCIPAL] = (authorization, principal)
                if access.limiter is not None:
                    refused = await _over_limit(access.limiter, principal, method, path)
                    if refused is not None:
                        return await _refuse(scope, send, 429, "Too many requests", *refused, close=False)
                bulk = self.bulk.get((method, path))
                if bulk is not None and (principal.admin or principal.roles & bulk.roles):
                    limit = bulk.max_bytes
        if method in NO_BODY_METHODS:
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await _refuse(scope, send, 400, "Bad request", "invalid Content-Length header", close=True)
                if length > limit:
                    return await _too_large(scope, send, limit)
                # the server delivers no more than the declared length: nothing to count
                return await self.app(scope, receive, send)
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope, receive, send, limit: int) -> None:
        """A body without a length (chunked): counted as it arrives; past the limit, the answer is
        a 413 at once and the app is told the client left (it stops reading)."""
        size = 0
        started = False
        refused = False

        async def counted_receive():
            nonlocal size, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                size += len(message.get("body", b""))
                if size > limit:
                    refused = True
                    if not started:
                        await _too_large(scope, send, limit)
                    return {"type": "http.disconnect"}
            elif refused:
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the 413 is the answer; whatever the app makes of the cut body is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # the app failed on the body it was refused (ClientDisconnect): already answered


async def _over_limit(limiter, principal: Principal, method: str, path: str):
    """(detail, headers) of a 429, or None. The bootstrap admin token has no limit."""
    if principal.device is not None:
        kind = device_class(method, path)
        subject, who = principal.device.device_id, "this device"
    elif principal.key_id is not None and principal.key_id != "admin-token":
        kind, subject, who = KEY, principal.key_id, f"the API key {principal.key_id}"
    else:
        return None
    checked = await limiter.check(kind, subject)
    if checked is None:
        return None
    verdict, limit = checked
    if verdict.allowed:
        return None
    what = {DEVICE_LOCATIONS: "location reports", DEVICE_TOKEN: "token refreshes"}.get(kind, "requests")
    return (f"{who} sent {what} faster than {limit.per_s:g}/s (bursts of {limit.burst}); "
            f"retry in {verdict.retry_after_s} s", verdict.headers(limit))


async def _too_large(scope, send, limit: int) -> None:
    await _refuse(scope, send, 413, "Payload too large", f"request body exceeds {limit} bytes", close=True)


async def _refuse(scope, send, status: int, title: str, detail: str, headers: dict | None = None, *,
                  close: bool) -> None:
    response = problem_response(status, title, detail, instance=scope["path"], headers=headers)
    if close:
        response.headers["connection"] = "close"
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})

