"""Delivery records in Redis (key layout: `vicino.services.kernel.contracts.deliveries`).

A record and every change of it are written by scripts over the customer's `{cs:NNN}` keys, so
that "first worker to see this idempotency key creates the delivery" and "this worker's change
applies only if nobody changed the record since it was read" (compare-and-set on `rev`) are
atomic, and a status change, its receipt and a dead-lettered job land together or not at all.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from vicino.services.runtime.redis_client import ReplicaWait
from vicino.services.kernel.contracts import customer_state as published
from vicino.services.kernel.contracts.deliveries import (
    DeliveryReceiptV1, customer_deliveries_index_key, customer_deliveries_key, dead_jobs_stream_key,
    delivery_owners_created_key, delivery_owners_key, receipts_stream_key, shard_of_delivery)
from vicino.services.kernel.contracts.erasures import ERASURES, erasure_digests
from vicino.services.kernel.contracts.interactions import customer_shard, merged_into_key
from vicino.services.kernel.contracts.push_jobs import PushJobV1, ended_visits_key

from ..domain.delivery import DeliveryRecord
from ...runtime.redis_scripts import memory_guarded

RECEIPTS_MAXLEN = 1_000_000   # per shard; the KPI roll-ups read them well before
DEAD_MAXLEN = 100_000
TRIM_BATCH = 100              # records past retention dropped per new delivery

# KEYS: deliveries hash, index zset, owners hash, receipts stream, ended visits zset, owners'
# created zset. ARGV: delivery_id, record JSON, created_at, customer_id, receipt JSON, visit_id,
# retention cutoff, receipts maxlen, retention ms. Returns {record JSON, visit ended (0/1), created (0/1)}.
# The shard's owners past retention go too (any customer's: one who never comes back would
# otherwise stay named there for ever), and a shard that falls silent expires whole.
_BEGIN = memory_guarded("""
local ended = redis.call('ZSCORE', KEYS[5], ARGV[6]) and 1 or 0
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return {cur, ended, 0} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'v', '1', 'data', ARGV[5])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[7], 'LIMIT', 0, %d)
for _, id in ipairs(old) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[6], id)
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. ARGV[7], 'LIMIT', 0, %d)
for _, id in ipairs(gone) do
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[6], id)
end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('PEXPIRE', KEYS[3], ARGV[9])
redis.call('PEXPIRE', KEYS[6], ARGV[9])
return {ARGV[2], ended, 1}
""" % (TRIM_BATCH, TRIM_BATCH))

# KEYS: deliveries hash, receipts stream, dead-letter stream.
# ARGV: delivery_id, expected rev, record JSON, receipt JSON ('' none), dead job JSON ('' none),
# dead reason, receipts maxlen, dead maxlen. Returns 'ok', 'stale' (changed since read) or 'gone'.
_SAVE = memory_guarded("""
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 'gone' end
if tonumber(cjson.decode(cur)['rev']) ~= tonumber(ARGV[2]) then return 'stale' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'v', '1', 'data', ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'v', '1', 'data', ARGV[5], 'dead_reason', ARGV[6])
end
return 'ok'
""")


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class Recipient:
    """What the gateway reads before a send, from what geo and the recommender publish."""

    registration: dict | None
    marketing_consent: bool
    erased_at: float | None


def receipt_of(rec: DeliveryRecord, now: float, status: str | None = None) -> DeliveryReceiptV1:
    status = status or rec.status
    return DeliveryReceiptV1(delivery_id=rec.delivery_id, customer_id=rec.customer_id, device_id=rec.device_id,
                             store_id=rec.store_id, offer_id=rec.offer_id, visit_id=rec.visit_id,
                             decision_id=rec.decision_id, campaign_id=rec.campaign_id, test=rec.test, status=status,
                             reason=rec.reason if status not in ("queued", "opened") else None,
                             provider=rec.provider, attempts=rec.attempts, ts=now)


def _latest(values) -> float | None:
    """The erasure time under either digest (keyed, or legacy bare SHA-256), or None."""
    found = [float(v) for v in values or () if v is not None]
    return max(found) if found else None


def _pairs(reply) -> dict[str, str]:
    """HGETALL as a dict, from redis-py (a dict) or the pipelined client (a flat list)."""
    if isinstance(reply, dict):
        return {_s(k): _s(v) for k, v in reply.items()}
    return {_s(reply[i]): _s(reply[i + 1]) for i in range(0, len(reply or ()), 2)}


class DeliveryRepository:
    def __init__(self, redis, customer_shards: int, event_shards: int, retention_s: float, hot_path=None,
                 replica_wait: ReplicaWait | None = None, *, erasure_key: bytes) -> None:
        """`hot_path`: the client for the per-job commands (`kernel.redis_client.open_hot_path`:
        pipelined on a standalone Redis, where redis-py's per-command cost would dominate).
        `replica_wait`: `replicated` waits for a replica to have a customer's delivery writes."""
        self._r = redis
        self.erasure_key = erasure_key  # the erasure register's HMAC key (settings.erasure_register_key())
        self._replicated = replica_wait
        self._hot = hot_path or redis
        self.customer_shards = customer_shards
        self.event_shards = event_shards
        self.retention_s = retention_s
        self._begin = self._hot.register_script(_BEGIN)
        self._save = self._hot.register_script(_SAVE)

    def shard(self, customer_id: str) -> int:
        return customer_shard(customer_id, self.customer_shards)

    async def replicated(self, customer_id: str) -> None:
        """Returns once a replica has this customer's delivery writes (with the push job before
        them: one hash tag, one master), or at once when no replica wait is configured."""
        if self._replicated is not None:
            await self._replicated.after_write(customer_deliveries_key(customer_id, self.customer_shards))

    async def recipient(self, customer_id: str, device_id: str) -> Recipient:
        # three slots: sent together (one write on the pipelined client)
        reg, marketing, erased = await asyncio.gather(
            self._hot.execute_command("HGETALL", published.device_registration_key(device_id, self.event_shards)),
            self._hot.execute_command("HGET", published.consent_key(customer_id), "marketing"),
            self._hot.execute_command("HMGET", ERASURES, *erasure_digests(customer_id, self.erasure_key)))
        reg = _pairs(reg)
        return Recipient(reg if reg and "customer_id" in reg else None, _s(marketing) == "1", _latest(erased))

    async def erased_at(self, customer_id: str) -> float | None:
        return _latest(await self._r.hmget(ERASURES, list(erasure_digests(customer_id, self.erasure_key))))

    async def begin(self, job: PushJobV1, fresh: DeliveryRecord, now: float) -> tuple[DeliveryRecord, bool, bool]:
        """The job's delivery: the existing one, or `fresh` (created `queued`). Returns (record,
        visit ended, created)."""
        shard = self.shard(job.customer_id)
        raw, ended, created = await self._begin(
            keys=[customer_deliveries_key(job.customer_id, self.customer_shards),
                  customer_deliveries_index_key(job.customer_id, self.customer_shards),
                  delivery_owners_key(shard), receipts_stream_key(shard),
                  ended_visits_key(job.customer_id, self.customer_shards), delivery_owners_created_key(shard)],
            args=[fresh.delivery_id, fresh.to_json(), repr(fresh.created_at), job.customer_id,
                  receipt_of(fresh, now).model_dump_json(by_alias=True), job.data.visit_id,
                  repr(now - self.retention_s), RECEIPTS_MAXLEN, int(self.retention_s * 1000)])
        return DeliveryRecord.from_json(raw), bool(int(ended)), bool(int(created))

    async def save(self, before: DeliveryRecord, after: DeliveryRecord, now: float, *, receipt: str | None,
                   dead_job: PushJobV1 | None = None, dead_reason: str = "") -> str:
        """`after` replaces `before` if the stored record is still `before` ('ok'); else 'stale'
        (someone changed it: read again) or 'gone' (erased). `receipt`: the status to log on the
        receipts stream (None: an internal change, such as the `sending` mark)."""
        shard = self.shard(after.customer_id)
        out = await self._save(
            keys=[customer_deliveries_key(after.customer_id, self.customer_shards), receipts_stream_key(shard),
                  dead_jobs_stream_key(shard)],
            args=[after.delivery_id, before.rev, after.to_json(),
                  receipt_of(after, now, receipt).model_dump_json(by_alias=True) if receipt else "",
                  dead_job.model_dump_json(by_alias=True) if dead_job else "", dead_reason[:500],
                  RECEIPTS_MAXLEN, DEAD_MAXLEN])
        return _s(out)

    async def get(self, delivery_id: str) -> DeliveryRecord | None:
        shard = shard_of_delivery(delivery_id)
        if shard is None or shard >= self.customer_shards:
            return None
        owner = await self._r.hget(delivery_owners_key(shard), delivery_id)
        if owner is None:
            return None
        raw = await self._r.hget(customer_deliveries_key(_s(owner), self.customer_shards), delivery_id)
        if not raw:  # the record expired or was erased: its owner entry goes too
            await self._r.hdel(delivery_owners_key(shard), delivery_id)
            await self._r.zrem(delivery_owners_created_key(shard), delivery_id)
            return None
        return DeliveryRecord.from_json(raw)

    async def for_customer(self, customer_id: str, limit: int) -> list[DeliveryRecord]:
        ids = await self._r.zrevrange(customer_deliveries_index_key(customer_id, self.customer_shards), 0, limit - 1)
        if not ids:
            return []
        raws = await self._r.hmget(customer_deliveries_key(customer_id, self.customer_shards), ids)
        return [DeliveryRecord.from_json(r) for r in raws if r]

    async def canonical(self, customer_id: str, max_hops: int = 16) -> str:
        """The surviving customer of `customer_id` (merge pointers the recommender publishes): a
        device registered under an id since merged away has its deliveries under the survivor."""
        current = customer_id
        for _ in range(max_hops):
            nxt = await self._r.get(merged_into_key(current, self.customer_shards))
            if nxt is None or _s(nxt) == current:
                return current
            current = _s(nxt)
        return current

    async def registration(self, device_id: str) -> dict | None:
        reg = await self._r.hgetall(published.device_registration_key(device_id, self.event_shards))
        reg = {_s(k): _s(v) for k, v in reg.items()}
        return reg if "customer_id" in reg else None
