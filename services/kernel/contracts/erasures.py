"""The erasure register: which customers were erased and when, as keyed digests of their ids.

Writer: the recommender's customer erasure. Readers: whatever writes a customer's data after the
fact (the recommender's exporter and workers, the push gateway), so that an erasure also reaches
work in flight.

A digest is an HMAC-SHA256 keyed with the register's key (`VICINO_ERASURE_KEY`, or one derived
from `VICINO_TOKEN_SECRET`): customer ids are often guessable (loyalty numbers, the UCI file's
five digits), and a bare SHA-256 of one is reversed by trying them all. Registers written before
the key (bare SHA-256, `legacy_erasure_digest`) are still read, never written.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

ERASURES = "vicino:{erasures}:customers"     # hash: HMAC(key, customer id) -> erased_at (epoch s)


def register_key(token_secret: str, erasure_key: str | None = None) -> bytes:
    """The register's HMAC key: `erasure_key` when set, else derived from the token secret (so
    every service and the CLI agree without another secret to distribute)."""
    if erasure_key:
        return erasure_key.encode()
    return hmac.new(b"vicino-erasure-register", token_secret.encode(), hashlib.sha256).digest()


def erasure_digest(customer_id: str, key: bytes) -> str:
    """Erased ids are remembered only as keyed digests: enough to drop them from exports, not
    enough to list who was erased without the key."""
    return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()


def legacy_erasure_digest(customer_id: str) -> str:
    """How registers written before the key named an erased id (read, never written)."""
    return hashlib.sha256(customer_id.encode()).hexdigest()


def erased_at_in(register: Mapping[str, float], customer_id: str, key: bytes) -> float | None:
    """When `customer_id` was erased according to `register` (digest -> erased at, as read whole),
    under either of its names; None if it was not."""
    found = [register[d] for d in erasure_digests(customer_id, key) if d in register]
    return float(max(found)) if found else None


def erasure_digests(customer_id: str, key: bytes) -> tuple[str, str]:
    """(keyed, legacy): the two names an erased id may have in the register."""
    return erasure_digest(customer_id, key), legacy_erasure_digest(customer_id)
