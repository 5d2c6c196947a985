"""The erasure register: which customers were erased and when, as SHA-256 digests of their ids.

Writer: the recommender's customer erasure. Readers: whatever writes a customer's data after the
fact (the recommender's exporter and workers, the push gateway), so that an erasure also reaches
work in flight.
"""
from __future__ import annotations

import hashlib

ERASURES = "vicino:{erasures}:customers"     # hash: sha256(customer id) -> erased_at (epoch s)


def erasure_digest(customer_id: str) -> str:
    """Erased ids are remembered only as digests: enough to drop them from exports."""
    return hashlib.sha256(customer_id.encode()).hexdigest()
