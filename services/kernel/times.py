"""Times at the public edge: RFC 3339 (UTC, `Z`) out, RFC 3339 or epoch seconds in.

Inside, a time is epoch seconds (a float): Redis, the streams and the model artifacts keep it so.
Only the API edge formats (`rfc3339`, `rfc3339_fields`) and parses (`parse_instant`, the
`InstantIn` field type); `InstantOut` is how a response model documents a formatted time (OpenAPI
`type: string, format: date-time`). Pure: no I/O."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Mapping

from pydantic import BeforeValidator, WithJsonSchema

MAX_EPOCH_S = 1e11  # year 5138: anything later is a unit mistake (milliseconds), not a time
EXAMPLE = "2025-12-06T05:46:40.123Z"


class BadInstant(ValueError):
    """Not a time: the message says why (for a 422 naming the field)."""


def rfc3339(t: float | None) -> str | None:
    """Epoch seconds as RFC 3339 in UTC with `Z`, to the nearest millisecond; None stays None.
    (Whole milliseconds first: a time written from one reads back as that millisecond, whatever
    the float's rounding, so a time can serve as a cursor.)"""
    if t is None:
        return None
    ms = round(float(t) * 1000)
    whole = datetime.fromtimestamp(ms // 1000, timezone.utc)
    return whole.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rfc3339_fields(record: Mapping[str, Any], *names: str) -> dict:
    """A copy of `record` with the named fields (epoch seconds or None) as RFC 3339: how a route
    shapes a stored record at its edge. A name the record lacks stays absent."""
    out = dict(record)
    for name in names:
        if name in out:
            out[name] = rfc3339(out[name])
    return out


def parse_instant(value: str | int | float) -> float:
    """RFC 3339 with an offset (`Z` or `+01:00`), or epoch seconds (a number or a numeric string),
    as epoch seconds. Raises BadInstant saying what is wrong."""
    if isinstance(value, bool):
        raise BadInstant("a time, not a boolean")
    if isinstance(value, (int, float)):
        try:
            t = float(value)
        except OverflowError:  # a JSON integer beyond a float's range
            raise BadInstant(f"out of range: after the year 5000 as epoch seconds: {value!r:.40}") from None
    elif isinstance(value, str):
        text = value.strip()
        if len(text) >= 10 and text[4:5] == "-":  # a date first: RFC 3339 (no exception on the common path)
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                try:  # RFC 3339 allows a lowercase t and z (rare: not tried first, this is the fixes' hot path)
                    parsed = datetime.fromisoformat(text.upper())
                except ValueError:
                    raise BadInstant(f"not RFC 3339 nor epoch seconds: {value[:40]!r}") from None
            if parsed.tzinfo is None:
                raise BadInstant(f"a time needs a UTC offset (Z or +01:00): {value[:40]!r}")
            t = parsed.timestamp()
        else:
            try:
                t = float(text)
            except ValueError:
                raise BadInstant(f"not RFC 3339 nor epoch seconds: {value[:40]!r}") from None
    else:
        raise BadInstant(f"a time is RFC 3339 text or epoch seconds, not {type(value).__name__}")
    if not math.isfinite(t):
        raise BadInstant(f"out of range: not a finite time: {str(value)[:40]}")
    if t >= MAX_EPOCH_S:
        raise BadInstant(f"out of range: after the year 5000 as epoch seconds (milliseconds?): {str(value)[:40]}")
    if t < 0:
        raise BadInstant(f"out of range: before 1970: {str(value)[:40]}")
    return t


# --- the field types of request and response models ---

INSTANT_IN_SCHEMA = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                     "description": "RFC 3339 with an offset (e.g. 2025-12-06T05:46:40Z), or epoch seconds"}
INSTANT_OUT_SCHEMA = {"type": "string", "format": "date-time", "example": EXAMPLE}

InstantIn = Annotated[float, BeforeValidator(parse_instant), WithJsonSchema(INSTANT_IN_SCHEMA)]
"""A request field: RFC 3339 with an offset or epoch seconds, validated into epoch seconds."""

InstantOut = Annotated[str, WithJsonSchema(INSTANT_OUT_SCHEMA)]
"""A response field: RFC 3339 in UTC with `Z` (made by `rfc3339`), as the OpenAPI documents it."""
