"""The erasure register: which customers were erased and when, kept only as keyed digests of
their ids (`vicino:{erasures}:customers`, `kernel.contracts.erasures`). Whatever writes a
customer's data after the fact (the exporter, an import, the workers) asks it, so that an
erasure also reaches rows in flight. Entries of a register written before the key (bare SHA-256)
are still honoured."""
from __future__ import annotations

from collections.abc import Iterable

from .redis_keys import ERASURES, erasure_digest, erasure_digests

CHUNK = 2500


class ErasureRegister:
    def __init__(self, redis, key: bytes) -> None:
        """`key`: `settings.erasure_register_key()`."""
        self._r = redis
        self.key = key

    async def record(self, customer_ids: Iterable[str], at: float) -> None:
        await self._r.hset(ERASURES, mapping={erasure_digest(c, self.key): repr(at) for c in customer_ids})

    async def erased_at(self, customer_id: str) -> float | None:
        values = [float(v) for v in await self._r.hmget(ERASURES, list(erasure_digests(customer_id, self.key)))
                  if v is not None]
        return max(values) if values else None

    async def erased_among(self, customer_ids: Iterable[str]) -> dict[str, float]:
        """customer id -> erased at, for those of `customer_ids` that were erased."""
        ids = list(customer_ids)
        out: dict[str, float] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i:i + CHUNK]
            values = await self._r.hmget(ERASURES, [d for c in chunk for d in erasure_digests(c, self.key)])
            for n, c in enumerate(chunk):
                found = [float(v) for v in values[2 * n:2 * n + 2] if v is not None]
                if found:
                    out[c] = max(found)
        return out

    async def all_digests(self) -> dict[str, float]:
        """digest -> erased at, the whole register (the rewrite of written Parquet files, which
        hashes each id it reads with this register's key: `parquet_log.apply_erasures`)."""
        return {(k.decode() if isinstance(k, bytes) else k): float(v)
                async for k, v in self._r.hscan_iter(ERASURES, count=10_000)}
