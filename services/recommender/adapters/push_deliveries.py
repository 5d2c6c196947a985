"""The push gateway's delivery records of a customer, as the erasure deletes them and a decision's
explanation shows them: the key names are the gateway's published contract
(`vicino.services.kernel.contracts.deliveries`); nothing else of the recommender reads or writes them."""
from __future__ import annotations

import orjson

from vicino.services.kernel.contracts.deliveries import (customer_deliveries_index_key, customer_deliveries_key,
                                                         delivery_id_for, delivery_owners_created_key,
                                                         delivery_owners_key)
from vicino.services.kernel.contracts.push_jobs import idempotency_key
from vicino.services.kernel.contracts.interactions import customer_shard


class PushDeliveryRecords:
    def __init__(self, redis, customer_shards: int) -> None:
        self._r = redis
        self._shards = customer_shards

    async def of_visit(self, customer_id: str, store_id: str, visit_id: str) -> dict | None:
        """The delivery of a visit's push (its id derives from the job's idempotency key): status,
        reason, provider, attempts, opened_at and the status history; None if the gateway has
        not taken the job (yet) or its record has expired."""
        shard = customer_shard(customer_id, self._shards)
        delivery_id = delivery_id_for(idempotency_key(customer_id, store_id, visit_id), shard)
        raw = await self._r.hget(customer_deliveries_key(customer_id, self._shards), delivery_id)
        if raw is None:
            return None
        d = orjson.loads(raw)
        return {k: d.get(k) for k in ("delivery_id", "status", "reason", "provider", "attempts", "created_at",
                                       "opened_at", "history")}

    async def has_any(self, customer_id: str) -> bool:
        return bool(await self._r.exists(customer_deliveries_key(customer_id, self._shards)))

    async def erase(self, customer_id: str) -> int:
        shard = customer_shard(customer_id, self._shards)
        owners = delivery_owners_key(shard)
        records = customer_deliveries_key(customer_id, self._shards)
        ids = {i.decode() if isinstance(i, bytes) else i for i in await self._r.hkeys(records)}
        # and the owner entries whose records are gone already (expired), found by their value
        # (the shard's owners hash holds at most the retention's deliveries)
        name = customer_id.encode()
        async for delivery_id, owner in self._r.hscan_iter(owners, count=1000):
            if owner == name:
                ids.add(delivery_id.decode() if isinstance(delivery_id, bytes) else delivery_id)
        if ids:
            await self._r.hdel(owners, *ids)
            await self._r.zrem(delivery_owners_created_key(shard), *ids)
        await self._r.delete(records, customer_deliveries_index_key(customer_id, self._shards))
        return len(ids)
