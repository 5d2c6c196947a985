"""A retailer's own messaging system: the notification as JSON, POSTed to a configured URL and
signed with HMAC-SHA256 over `<timestamp>.<body>` (headers `Vicino-Timestamp` and
`Vicino-Signature: v1=<hex>`; `domain.messages.verify_webhook_signature` is the receiver's side).
A 2xx is delivered; 410 Gone says the token is dead; 408, 425, 429 and 5xx are retried."""
from __future__ import annotations

import time

import httpx

from ...domain.messages import SIGNATURE_HEADER, TIMESTAMP_HEADER, Notification, webhook_body, webhook_signature
from ...domain.outcomes import Delivered, GiveUp, ProviderOutcome, RetryLater, TokenInvalid
from ...domain.retry_policy import parse_retry_after
from .base import post_within, transport_failure


class WebhookProvider:
    name = "webhook"

    def __init__(self, url: str, secret: str, http: httpx.AsyncClient, *, timeout_s: float = 10.0, clock=time.time) -> None:
        self.url = url
        self._secret = secret
        self._http = http
        self._timeout = timeout_s
        self._clock = clock

    async def send(self, n: Notification, attempt: int) -> ProviderOutcome:
        now = self._clock()
        body = webhook_body(n, now)
        ts = int(now)
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts),
                   SIGNATURE_HEADER: webhook_signature(self._secret, ts, body),
                   "Vicino-Delivery-Id": n.delivery_id, "Vicino-Attempt": str(attempt)}
        try:
            r = await post_within(self._http, self.url, self._timeout, content=body, headers=headers)
        except httpx.HTTPError as e:
            return transport_failure(e)
        if 200 <= r.status_code < 300:
            return Delivered(r.headers.get("x-message-id"))
        what = f"webhook: {r.status_code} {r.text[:120]}"
        if r.status_code == 410:
            return TokenInvalid(what)
        if r.status_code in (408, 425, 429) or r.status_code >= 500:
            return RetryLater(what, parse_retry_after(r.headers.get("retry-after"), now))
        return GiveUp(what)
