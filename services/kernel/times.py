"""Times at the public edge: RFC 3339 (UTC, `Z`) out, RFC 3339 or epoch seconds in.

Inside, a time is epoch seconds (a float); only the API edge formats and parses. Pure: no I/O."""
from __future__ import annotations

import math
from datetime import datetime, timezone

MAX_EPOCH_S = 1e11  # year 5138: anything later is a unit mistake (milliseconds), not a time


class BadInstant(ValueError):
    """Not a time: the message says why (for a 422 naming the field)."""


def rfc3339(t: float | None) -> str | None:
    """Epoch seconds as RFC 3339 in UTC with `Z`, to the millisecond; None stays None."""
    if t is None:
        return None
    dt = datetime.fromtimestamp(float(t), timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_instant(value: str | int | float) -> float:
    """RFC 3339 with an offset (`Z` or `+01:00`), or epoch seconds (a number or a numeric string),
    as epoch seconds. Raises BadInstant saying what is wrong."""
    if isinstance(value, bool):
        raise BadInstant("a time, not a boolean")
    if isinstance(value, (int, float)):
        t = float(value)
    else:
        text = value.strip()
        try:
            t = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
            except ValueError:
                raise BadInstant(f"not RFC 3339 nor epoch seconds: {value!r}") from None
            if parsed.tzinfo is None:
                raise BadInstant(f"a time needs an offset (Z or +01:00): {value!r}")
            t = parsed.timestamp()
    if not math.isfinite(t) or not 0 <= t < MAX_EPOCH_S:
        raise BadInstant(f"out of range (epoch seconds 0 to 1e11): {value!r}")
    return t
