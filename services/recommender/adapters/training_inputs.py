"""What retraining reads of the deployment besides the Parquet log: the erasure register (whose
rows training must never see) and personalisation consent as the geo service publishes it (who
may have a learned row). Synchronous: training runs in a thread, or in `vicino train`."""
from __future__ import annotations

from vicino.services.kernel.contracts.customer_state import consent_key

from .redis_keys import ERASURES

CHUNK = 1000


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def erased_customers(redis) -> dict[str, float]:
    """The erasure register: keyed digest of a customer id -> erased at (`erased_at_in` reads it)."""
    return {_text(k): float(v) for k, v in redis.hscan_iter(ERASURES, count=10_000)}


def personalised_among(redis, customer_ids: list[str]) -> set[str]:
    """Those of `customer_ids` whose published consent says personalisation: yes (no record: no,
    as ranking reads it)."""
    out: set[str] = set()
    for i in range(0, len(customer_ids), CHUNK):
        chunk = customer_ids[i:i + CHUNK]
        pipe = redis.pipeline(transaction=False)
        for c in chunk:
            pipe.hget(consent_key(c), "personalisation")
        out.update(c for c, v in zip(chunk, pipe.execute()) if v is not None and _text(v) == "1")
    return out
