"""When to try a failed delivery again: exponential backoff with jitter, never sooner than the
provider's Retry-After, never after the push's moment has passed. Pure: the random draw is an
argument."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6        # sends tried, the first included
    base_s: float = 1.0          # pause after the first failure
    max_s: float = 300.0         # longest pause
    jitter: float = 0.5          # the pause is drawn in [(1 - jitter) x, x]: replicas don't retry in step


@dataclass(frozen=True, slots=True)
class RetryVerdict:
    at: float | None             # when to try again; None: no more tries
    give_up_status: str | None   # "failed" (attempts spent) or "expired" (the next try would be too late)
    reason: str


def next_attempt(policy: RetryPolicy, attempts: int, retry_after_s: float | None, now: float, expires_at: float,
                 draw: float) -> RetryVerdict:
    """`attempts`: sends tried so far (>= 1); `draw`: uniform in [0, 1)."""
    if attempts >= policy.max_attempts:
        return RetryVerdict(None, "failed", f"gave up after {attempts} attempts")
    ceiling = min(policy.base_s * 2 ** (attempts - 1), policy.max_s)
    pause = ceiling * (1.0 - policy.jitter * draw)
    if retry_after_s is not None and retry_after_s > pause:
        pause = min(retry_after_s, 86_400.0)  # the provider's word, within reason
    at = now + pause
    if at >= expires_at:
        return RetryVerdict(None, "expired", f"the next try ({pause:.1f} s away) would be after the push expires")
    return RetryVerdict(at, None, f"retry in {pause:.1f} s")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After is seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None
