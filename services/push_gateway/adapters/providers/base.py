"""The provider port: `send` one notification, get back one outcome of the closed set in
`domain.outcomes`. Every adapter takes an injected `httpx.AsyncClient` (tests hand one pointed at
a real local server); the delivery use case bounds the requests in flight per provider. httpx's
exception tree (`httpx._exceptions`) maps to outcomes here: a timeout or a refused connection is "retry later", never a crash."""
from __future__ import annotations

from typing import Protocol

import httpx

from ...domain.messages import Notification
from ...domain.outcomes import ProviderOutcome, RetryLater


class ProviderConfigError(Exception):
    """A provider is configured but cannot work (unreadable key, missing field): refuse to start."""


class PushProvider(Protocol):
    name: str

    async def send(self, n: Notification, attempt: int) -> ProviderOutcome: ...


def transport_failure(e: httpx.HTTPError) -> RetryLater:
    if isinstance(e, httpx.TimeoutException):
        return RetryLater(f"timeout ({type(e).__name__})")
    return RetryLater(f"unreachable ({type(e).__name__}: {str(e)[:120]})")
