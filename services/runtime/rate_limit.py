"""Per device and per API key rate limits in Redis: one GCRA script per request (see
`vicino.services.kernel.rate_limits`), cluster-safe (one key per caller, its own hash tag).

The script reads Redis's own clock (`TIME`), so replicas with skewed clocks share a bucket
fairly. It fails open: when Redis cannot answer, the request goes on (and meets the same Redis
in its route, which answers 503): the limiter never turns an outage into a different error,
and never refuses a phone because of a Redis hiccup.
"""
from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from ..kernel.rate_limits import RateLimit, Verdict, bucket_key
from .redis_scripts import memory_guarded

log = logging.getLogger("vicino.rate_limit")

# KEYS[1]: the bucket (TAT in server µs); ARGV: interval (µs), burst
_GCRA = memory_guarded("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
""")

_WARN_EVERY_S = 10.0


class RateLimiter:
    def __init__(self, redis, limits: dict[str, RateLimit]) -> None:
        """`redis`: a client whose scripts are called as `await script(keys=, args=)` (redis-py's, or
        the pipelined hot path client). `limits`: by class; a class without one is not limited."""
        self.limits = limits
        self._script = redis.register_script(_GCRA)
        self._warned_at = 0.0

    async def check(self, kind: str, subject: str) -> tuple[Verdict, RateLimit] | None:
        """The verdict for one more request of `subject` in class `kind`; None when not limited
        (no limit for the class, or Redis did not answer: fail open)."""
        limit = self.limits.get(kind)
        if limit is None:
            return None
        try:
            out = await self._script(keys=[bucket_key(kind, subject)], args=[limit.interval_us, limit.burst])
        except (RedisError, OSError) as e:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                log.warning("rate limit not checked (Redis did not answer): request let through",
                            extra={"fields": {"error": repr(e)[:200]}})
            return None
        return Verdict(bool(int(out[0])), int(out[1]), int(out[2]), int(out[3])), limit
