"""The push gateway's delivery-owner index (delivery id -> customer id, per shard) on real Redis:
its entries expire with the deliveries' retention even when their customer never comes back, and
an erasure removes the erased customer's entries even when their records are already gone."""
from __future__ import annotations

import asyncio
import time

from vicino.services.kernel.contracts.deliveries import (customer_deliveries_key, delivery_id_for,
                                                         delivery_owners_created_key, delivery_owners_key)
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.push_gateway.adapters.delivery_repository import DeliveryRepository
from vicino.services.push_gateway.domain.delivery import DeliveryRecord
from vicino.services.recommender.adapters.push_deliveries import PushDeliveryRecords
from vicino.services.runtime.redis_client import open_async
from tests.integration._push_support import make_job

SHARDS = 16
RETENTION_S = 2 * 86_400.0


def _same_shard(prefix: str, n: int) -> list[str]:
    """`n` customer ids of one shard (so their deliveries share one owners index)."""
    ids, i = [], 0
    while len(ids) < n and i < 10_000:
        c = f"{prefix}-{i}"
        if customer_shard(c, SHARDS) == 5:
            ids.append(c)
        i += 1
    assert len(ids) == n
    return ids


async def _begin(repo: DeliveryRepository, customer: str, now: float) -> str:
    job = make_job(customer, "dev-" + customer, created_at=now)
    delivery_id = delivery_id_for(job.idempotency_key, repo.shard(customer))
    await repo.begin(job, DeliveryRecord.from_job(job, delivery_id, now), now)
    return delivery_id


def test_owner_entries_expire_even_when_their_customer_never_returns(redis_url, redis_sync):
    silent, busy = _same_shard("own-exp", 2)

    async def go():
        redis = open_async(redis_url)
        try:
            repo = DeliveryRepository(redis, SHARDS, SHARDS, RETENTION_S, erasure_key=b"k" * 32)
            t0 = time.time() - 3 * 86_400
            old = await _begin(repo, silent, t0)
            assert (await repo.get(old)) is not None
            # the silent customer's records expire on their own (a TTL of the retention)...
            redis_sync.delete(customer_deliveries_key(silent, SHARDS))
            # ...and another customer of the shard gets a push after the retention
            fresh = await _begin(repo, busy, t0 + RETENTION_S + 60)
            return old, fresh
        finally:
            await redis.aclose()

    old, fresh = asyncio.run(go())
    owners = redis_sync.hgetall(delivery_owners_key(5))
    assert old.encode() not in owners and silent.encode() not in owners.values()
    assert owners[fresh.encode()] == busy.encode()
    assert redis_sync.zscore(delivery_owners_created_key(5), old) is None
    assert redis_sync.pttl(delivery_owners_key(5)) > 0  # a shard that falls silent expires whole


def test_erasure_drops_owner_entries_whose_records_are_gone(redis_url, redis_sync):
    erased, other = _same_shard("own-era", 2)

    async def go():
        redis = open_async(redis_url)
        try:
            repo = DeliveryRepository(redis, SHARDS, SHARDS, RETENTION_S, erasure_key=b"k" * 32)
            now = time.time()
            ids = [await _begin(repo, erased, now - 10), await _begin(repo, other, now - 5)]
            redis_sync.delete(customer_deliveries_key(erased, SHARDS))  # expired before the erasure
            await PushDeliveryRecords(redis, SHARDS).erase(erased)
            return ids
        finally:
            await redis.aclose()

    gone, kept = asyncio.run(go())
    owners = redis_sync.hgetall(delivery_owners_key(5))
    assert erased.encode() not in owners.values() and gone.encode() not in owners
    assert owners[kept.encode()] == other.encode()
    assert redis_sync.zscore(delivery_owners_created_key(5), gone) is None
