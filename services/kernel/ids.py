"""Identifiers: time-ordered, url-safe, without coordination between replicas."""
from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case

# Ids supplied by clients (stores, devices, customers) end up inside Redis keys and URLs.
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
_CLIENT_ID_RE = re.compile(CLIENT_ID_PATTERN)


def is_valid_client_id(value: str) -> bool:
    # fullmatch, not match: `$` also matches before a final newline, and "s1\n" would pass,
    # then never be found again by a path that cannot carry the newline
    return bool(_CLIENT_ID_RE.fullmatch(value))


def new_id(prefix: str) -> str:
    """A ULID-like id: 48 bits of milliseconds then 80 random bits, so ids sort by creation."""
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[n & 31])
        n >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
