"""The erasure register: which customers were erased and when, kept only as SHA-256 digests of
their ids (`vicino:{erasures}:customers`). Whatever writes a customer's data after the fact (the
exporter, an import, the workers) asks it, so that an erasure also reaches rows in flight."""
from __future__ import annotations

from collections.abc import Iterable

from .redis_keys import ERASURES, erasure_digest

CHUNK = 5000


class ErasureRegister:
    def __init__(self, redis) -> None:
        self._r = redis

    async def record(self, customer_ids: Iterable[str], at: float) -> None:
        await self._r.hset(ERASURES, mapping={erasure_digest(c): repr(at) for c in customer_ids})

    async def erased_at(self, customer_id: str) -> float | None:
        raw = await self._r.hget(ERASURES, erasure_digest(customer_id))
        return float(raw) if raw is not None else None

    async def erased_among(self, customer_ids: Iterable[str]) -> dict[str, float]:
        """customer id -> erased at, for those of `customer_ids` that were erased."""
        ids = list(customer_ids)
        out: dict[str, float] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i:i + CHUNK]
            values = await self._r.hmget(ERASURES, [erasure_digest(c) for c in chunk])
            out.update({c: float(v) for c, v in zip(chunk, values) if v is not None})
        return out

    async def all_digests(self) -> dict[str, float]:
        """digest -> erased at, the whole register (the rewrite of written Parquet files)."""
        return {(k.decode() if isinstance(k, bytes) else k): float(v)
                async for k, v in self._r.hscan_iter(ERASURES, count=10_000)}
