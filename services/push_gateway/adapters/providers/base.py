"""The provider port: `send` one notification, get back one outcome of the closed set in
`domain.outcomes`. Every adapter takes an injected `httpx.AsyncClient` (tests hand one pointed at
a real local server); the delivery use case bounds the requests in flight per provider. httpx's
exception tree (`httpx._exceptions`) maps to outcomes here: a timeout or a refused connection is "retry later", never a crash.

A timeout after the request was written leaves the outcome unknown: the provider may have accepted
the push. It is retried all the same, and every attempt carries the same collapse identifiers
(`domain.messages`), so that a second copy replaces the first on the device instead of adding one."""
from __future__ import annotations

import asyncio
from typing import Protocol

import httpx

from ...domain.messages import Notification
from ...domain.outcomes import ProviderOutcome, RetryLater


class ProviderConfigError(Exception):
    """A provider is configured but cannot work (unreadable key, missing field): refuse to start."""


class PushProvider(Protocol):
    name: str

    async def send(self, n: Notification, attempt: int) -> ProviderOutcome: ...


class DeadlineExceeded(httpx.TimeoutException):
    """The whole request (connection, upload, the answer read to its end) took longer than allowed."""


async def post_within(http, url: str, deadline_s: float, **kw) -> httpx.Response:
    """`http.post`, all of it within `deadline_s`. httpx's own timeout bounds each phase on its own
    (each read of a chunk, each write): a server that trickles its answer a byte at a time never
    trips it, and one provider call could hold its slot, and the delivery's `sending` lease, for
    as long as the server likes."""
    try:
        async with asyncio.timeout(deadline_s):
            return await http.post(url, timeout=deadline_s, **kw)
    except TimeoutError:
        raise DeadlineExceeded(f"no complete answer within {deadline_s:g} s") from None


# nothing reached the provider: a retry cannot duplicate anything
_NOT_SENT = (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError)


def transport_failure(e: httpx.HTTPError) -> RetryLater:
    unknown = "" if isinstance(e, _NOT_SENT) else "; outcome unknown, retried under the same collapse id"
    if isinstance(e, httpx.TimeoutException):
        return RetryLater(f"timeout ({type(e).__name__}{unknown})")
    return RetryLater(f"unreachable ({type(e).__name__}: {str(e)[:120]}{unknown})")
