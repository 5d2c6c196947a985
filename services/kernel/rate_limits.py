"""Rate limits (pure): a sustained rate and a burst per class of caller, the Redis key of one
caller's bucket, and what a verdict tells the client (`Retry-After`, `RateLimit-*`).

The limiter (`vicino.services.runtime.rate_limit`) runs GCRA in one Lua script per request: a
bucket is a single number, the theoretical arrival time (TAT) of the next request, in Redis
server microseconds. A request is admitted when `TAT + interval - burst * interval <= now`;
it then moves TAT on by one interval. So a caller idle long enough may send `burst` requests at
once, then one per interval.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

# the classes of caller, each with its own limit and its own bucket per caller
DEVICE_LOCATIONS = "dev-loc"   # a device token on POST /v1/locations
DEVICE_TOKEN = "dev-tok"       # a device token on POST /v1/devices/{device_id}/token (a refresh)
DEVICE = "dev"                 # a device token on any other route
KEY = "key"                    # an API key (the bootstrap admin token is not limited)


def device_class(method: str, path: str) -> str:
    """The class of a device token's request: its location reports and its token refreshes have
    limits of their own (a phone reports every few seconds, and refreshes once in weeks)."""
    if method == "POST":
        if path == "/v1/locations":
            return DEVICE_LOCATIONS
        parts = path.split("/")
        if len(parts) == 5 and parts[1:3] == ["v1", "devices"] and parts[4] == "token":
            return DEVICE_TOKEN
    return DEVICE


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_s: float  # sustained requests per second
    burst: int    # requests admitted at once after a quiet spell

    @property
    def interval_us(self) -> int:
        """The time one request costs, in microseconds (at least 1)."""
        return max(1, round(1_000_000 / self.per_s))


def bucket_key(kind: str, subject: str) -> str:
    """One caller's bucket: `vicino:{rl:<16 hex>}:<kind>`. The subject (a device id, a key id) is
    hashed: client-chosen ids stay out of key names, and each bucket has a hash tag of its own,
    so buckets spread over a Cluster's slots."""
    digest = hashlib.sha256(subject.encode()).hexdigest()[:16]
    return f"vicino:{{rl:{digest}}}:{kind}"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining: int  # requests that could still be sent now
    wait_us: int    # refused: until one more request would be admitted
    reset_us: int   # until the bucket is full again

    @property
    def retry_after_s(self) -> int:
        """`Retry-After` in whole seconds, never 0 (a client told 0 retries at once)."""
        return max(1, math.ceil(self.wait_us / 1_000_000))

    def headers(self, limit: RateLimit) -> dict[str, str]:
        """`Retry-After` and the `RateLimit-*` fields (draft-ietf-httpapi-ratelimit-headers)."""
        return {"Retry-After": str(self.retry_after_s), "RateLimit-Limit": str(limit.burst),
                "RateLimit-Remaining": str(max(0, self.remaining)),
                "RateLimit-Reset": str(max(1, math.ceil(self.reset_us / 1_000_000))),
                "RateLimit-Policy": f"{limit.burst};w={max(1, math.ceil(limit.burst / limit.per_s))}"}
