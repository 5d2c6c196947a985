"""Customers in Redis: hot history with its deduplication window, identifiers and the identifier
directory, merge pointers, visits, redeemed offers; and the shard interaction streams.

Ingestion is one script per customer shard: for each interaction, "is the customer merged away?
seen this event id? keep it in the hot history, trim, log it to the stream" happens atomically,
so an acknowledged interaction is always in the stream and a retried one is never there twice.
"""
from __future__ import annotations

import asyncio

import orjson

from vicino.services.kernel.contracts.interactions import (CustomerMergedV1, InteractionV1, customer_shard,
                                                          customer_shard_tag)

from ..domain.identity import Moved
from ..settings import RecommenderSettings
from .redis_keys import CustomerKeys, identifier_key
from ...runtime.redis_scripts import memory_guarded

KEYS_PER_ITEM = 5
ARGS_PER_ITEM = 5

# KEYS[1]: the shard stream; then per item: merged_into, seen, history, events, redeemed.
# ARGV: now_ms, window_ms, hot_n, maxlen, log (1: dedup window + stream; 0: hot history only),
# then per item: event_id, ts_ms, hot JSON, stream JSON, redeemed offer id or ''.
_APPEND = memory_guarded("""
local now, window, hot_n, maxlen, log = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
local trimmed = {}
for i = 0, (#KEYS - 1) / 5 - 1 do
  local k, a = 2 + i * 5, 6 + i * 5
  local merged = redis.call('GET', KEYS[k])
  if merged then
    out[#out + 1] = 'moved:' .. merged
  else
    local eid = ARGV[a]
    local fresh = 1
    if log == '1' then
      if not trimmed[KEYS[k + 1]] then  -- once per customer and call
        redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now - window)
        trimmed[KEYS[k + 1]] = true
      end
      fresh = redis.call('ZADD', KEYS[k + 1], 'NX', now, eid)
      if trimmed[KEYS[k + 1]] == true then
        redis.call('PEXPIRE', KEYS[k + 1], window)
        trimmed[KEYS[k + 1]] = 1
      end
    end
    if fresh == 1 and redis.call('HEXISTS', KEYS[k + 3], eid) == 1 then fresh = 0 end
    if fresh == 0 then
      out[#out + 1] = 'duplicate'
    else
      redis.call('ZADD', KEYS[k + 2], ARGV[a + 1], eid)
      redis.call('HSET', KEYS[k + 3], eid, ARGV[a + 2])
      local extra = redis.call('ZCARD', KEYS[k + 2]) - hot_n
      if extra > 0 then
        local old = redis.call('ZRANGE', KEYS[k + 2], 0, extra - 1)
        redis.call('ZREMRANGEBYRANK', KEYS[k + 2], 0, extra - 1)
        redis.call('HDEL', KEYS[k + 3], unpack(old))
      end
      if ARGV[a + 4] ~= '' then redis.call('SADD', KEYS[k + 4], ARGV[a + 4]) end
      if log == '1' then
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'kind', 'interaction', 'v', '1', 'data', ARGV[a + 3])
      end
      out[#out + 1] = 'ok'
    end
  end
end
return out
""")

# KEYS: visits zset, visit_info hash, merged_into. ARGV: visit_id, entered_at, info JSON, keep_n.
_RECORD_VISIT = memory_guarded("""
local merged = redis.call('GET', KEYS[3])
if merged then return 'moved:' .. merged end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if extra > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
end
return 'ok'
""")

# Batches, per slot. KEYS: one key per call; ARGV: per call a count, then that many values.
# Each returns one reply per key, in order.
# KEYS: ARGV[1] keys per customer, one customer after the other; one count per customer.
_EXISTS_MANY = """
local n, out = tonumber(ARGV[1]), {}
for i = 1, #KEYS, n do out[#out + 1] = redis.call('EXISTS', unpack(KEYS, i, i + n - 1)) end
return out
"""
_SETNX_MANY = memory_guarded("""
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('SET', k, ARGV[2 * i], 'NX') and 1 or 0
end
return out
""")
_SADD_MANY = memory_guarded("""
local out, a = {}, 1
for i, k in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  out[i] = redis.call('SADD', k, unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
return out
""")
_HSET_MANY = memory_guarded("""
local out, a = {}, 1
for i, k in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  out[i] = redis.call('HSET', k, unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
return out
""")

_HOT_FIELDS = ("event_id", "channel", "type", "item_id", "offer_id", "store_id", "quantity", "value", "currency", "country",
               "score", "reply_to", "ts", "received_at")


def hot_entry(i: InteractionV1) -> bytes:
    """The compact form kept in the hot history (the customer is implied by the key)."""
    return orjson.dumps({f: getattr(i, f) for f in _HOT_FIELDS if getattr(i, f) is not None})


def _slot_tag(key: str) -> str:
    """The hash tag that picks a key's Cluster slot (`{cs:007}`): keys sharing it share a slot."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start:end + 1] if 0 <= start < end - 1 else key


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def parse_write_outcome(reply) -> str | Moved:
    """A write script's reply as a typed outcome, parsed here once: `Moved(<id>)` for the scripts'
    'moved:<id>', else the word itself ('ok', 'duplicate', 'stale')."""
    reply = _s(reply)
    if reply.startswith("moved:"):
        return Moved(reply.removeprefix("moved:"))
    return reply


class CustomerRepository:
    def __init__(self, redis, settings: RecommenderSettings) -> None:
        self._r = redis
        self._settings = settings
        self._shards = settings.customer_shards
        self._append = redis.register_script(_APPEND)
        self._record_visit = redis.register_script(_RECORD_VISIT)
        self._exists_many = redis.register_script(_EXISTS_MANY)
        self._setnx_many = redis.register_script(_SETNX_MANY)
        self._sadd_many = redis.register_script(_SADD_MANY)
        self._hset_many = redis.register_script(_HSET_MANY)

    @property
    def erasure_key(self) -> bytes:
        """The erasure register's HMAC key (kernel.contracts.erasures)."""
        return self._settings.erasure_register_key()

    @property
    def redis(self):
        return self._r

    @property
    def shards(self) -> int:
        return self._shards

    def keys(self, customer_id: str) -> CustomerKeys:
        return CustomerKeys(customer_id, self._shards)

    # interactions ------------------------------------------------------------------------------

    async def append(self, items: list[InteractionV1], *, log: bool, now: float | None = None) -> list[str | Moved]:
        """Stores each interaction under its `customer_id`; outcome per item, in order: "ok",
        "duplicate", or `Moved(<id>)` when that customer has been merged into another.
        `log=False` (imports, merges) keeps the hot history only: no dedup window, no stream."""
        by_shard: dict[int, list[int]] = {}
        for n, item in enumerate(items):
            by_shard.setdefault(customer_shard(item.customer_id, self._shards), []).append(n)
        outcomes: list[str | Moved] = [""] * len(items)
        now_ms = int((now if now is not None else items[0].received_at if items else 0) * 1000)
        s = self._settings
        for positions in by_shard.values():
            # bounded scripts: a long one would block every other client of this Redis
            for start in range(0, len(positions), 500):
                chunk = positions[start:start + 500]
                keys: list[str] = [self.keys(items[chunk[0]].customer_id).stream]
                args: list = [now_ms, int(s.dedup_window_s * 1000), s.history_hot_per_customer,
                              s.interactions_maxlen, "1" if log else "0"]
                for n in chunk:
                    i = items[n]
                    k = self.keys(i.customer_id)
                    keys += [k.merged_into, k.seen, k.history, k.events, k.redeemed]
                    args += [i.event_id, int(i.ts * 1000), hot_entry(i), i.model_dump_json(by_alias=True),
                             i.offer_id if i.type == "offer_redeem" and i.offer_id else ""]
                out = await self._append(keys=keys, args=args)
                for n, o in zip(chunk, out):
                    outcomes[n] = parse_write_outcome(o)
        return outcomes

    async def hot_history(self, customer_id: str, limit: int | None = None) -> list[dict]:
        """Most recent first."""
        k = self.keys(customer_id)
        stop = -1 if limit is None else limit - 1
        ids = await self._r.zrevrange(k.history, 0, stop)
        if not ids:
            return []
        raw = await self._r.hmget(k.events, ids)
        return [orjson.loads(r) for r in raw if r is not None]

    async def hot_entries_raw(self, customer_id: str) -> dict[str, bytes]:
        return {_s(k): v for k, v in (await self._r.hgetall(self.keys(customer_id).events)).items()}

    async def seen(self, customer_id: str) -> list[tuple[str, float]]:
        return [(_s(m), sc) for m, sc in await self._r.zrange(self.keys(customer_id).seen, 0, -1, withscores=True)]

    async def add_seen(self, customer_id: str, entries: list[tuple[str, float]]) -> None:
        if entries:
            k = self.keys(customer_id)
            await self._r.zadd(k.seen, {m: sc for m, sc in entries}, nx=True)
            await self._r.pexpire(k.seen, int(self._settings.dedup_window_s * 1000))

    async def redeemed(self, customer_id: str) -> set[str]:
        return {_s(m) for m in await self._r.smembers(self.keys(customer_id).redeemed)}

    async def add_redeemed(self, customer_id: str, offer_ids: set[str]) -> None:
        if offer_ids:
            await self._r.sadd(self.keys(customer_id).redeemed, *offer_ids)

    # visits --------------------------------------------------------------------------------------

    async def record_visit(self, customer_id: str, visit_id: str, entered_at: float, info: dict) -> str | Moved:
        """"ok", or `Moved(<id>)` when that customer has been merged into another."""
        k = self.keys(customer_id)
        out = await self._record_visit(keys=[k.visits, k.visit_info, k.merged_into],
                                       args=[visit_id, entered_at, orjson.dumps(info),
                                             self._settings.visits_per_customer])
        return parse_write_outcome(out)

    async def visit(self, customer_id: str, visit_id: str) -> dict | None:
        raw = await self._r.hget(self.keys(customer_id).visit_info, visit_id)
        return orjson.loads(raw) if raw else None

    async def visits(self, customer_id: str, limit: int | None = None) -> list[dict]:
        """Most recent first."""
        k = self.keys(customer_id)
        ids = await self._r.zrevrange(k.visits, 0, -1 if limit is None else limit - 1)
        if not ids:
            return []
        return [orjson.loads(r) for r in await self._r.hmget(k.visit_info, ids) if r is not None]

    # identity --------------------------------------------------------------------------------------

    def _idkey(self, identifier: str) -> str:
        return identifier_key(identifier, self._shards)

    async def merged_into(self, customer_id: str) -> str | None:
        v = await self._r.get(self.keys(customer_id).merged_into)
        return _s(v) if v is not None else None

    async def set_merged_into(self, customer_id: str, into: str) -> None:
        await self._r.set(self.keys(customer_id).merged_into, into)

    async def identifier_owner(self, identifier: str) -> str | None:
        v = await self._r.get(self._idkey(identifier))
        return _s(v) if v is not None else None

    async def claim_identifier(self, identifier: str, customer_id: str) -> str:
        """Links the identifier to the customer unless someone holds it; returns the holder."""
        if await self._r.set(self._idkey(identifier), customer_id, nx=True):
            await self._r.sadd(self.keys(customer_id).identifiers, identifier)
            return customer_id
        return await self.identifier_owner(identifier) or customer_id

    async def move_identifier(self, identifier: str, to: str) -> None:
        await self._r.set(self._idkey(identifier), to)
        await self._r.sadd(self.keys(to).identifiers, identifier)

    async def forget_identifier(self, identifier: str, owner: str) -> None:
        # only if it still points at this owner: never undo a newer link by someone else
        if await self.identifier_owner(identifier) == owner:
            await self._r.delete(self._idkey(identifier))
        await self._r.srem(self.keys(owner).identifiers, identifier)

    async def identifiers(self, customer_id: str) -> list[str]:
        return sorted(_s(m) for m in await self._r.smembers(self.keys(customer_id).identifiers))

    async def aliases(self, customer_id: str) -> list[str]:
        return sorted(_s(m) for m in await self._r.smembers(self.keys(customer_id).aliases))

    async def add_aliases(self, customer_id: str, aliases: list[str]) -> None:
        if aliases:
            await self._r.sadd(self.keys(customer_id).aliases, *aliases)

    async def log_merge(self, merged: str, into: str, now: float) -> None:
        """Training reads merges from the log to join the older rows of `merged` to `into`."""
        await self._r.xadd(self.keys(into).stream, CustomerMergedV1(merged=merged, into=into, ts=now).to_stream_fields(),
                           maxlen=self._settings.interactions_maxlen, approximate=True)

    async def has_data(self, customer_id: str) -> bool:
        k = self.keys(customer_id)
        return bool(await self._r.exists(k.history, k.events, k.identifiers, k.visits, k.redeemed, k.aliases, k.seen,
                                         k.attributes))

    # attributes (locale, country) and batches of customers ----------------------------------------

    async def attributes(self, customer_id: str) -> dict[str, str]:
        """What a CRM import said of the customer: `locale` (BCP 47, canonical: "it-IT"),
        `country` (ISO 3166-1 alpha-2), `updated_at` (epoch seconds, as text); each only when
        known, {} for a customer never imported. Read under the id given (resolve merges first)."""
        raw = await self._r.hgetall(self.keys(customer_id).attributes)
        return {_s(k): _s(v) for k, v in raw.items()}

    async def set_attributes(self, updates: list[tuple[str, dict[str, str]]], now: float) -> None:
        """Per (customer, {field: value}): those fields set, the others kept."""
        await self._per_slot(self._hset_many, [
            (self.keys(c).attributes, [len(v) * 2 + 2, *(x for kv in v.items() for x in kv), "updated_at", repr(now)])
            for c, v in updates])

    async def fill_attributes(self, customer_id: str, values: dict[str, str]) -> None:
        """Sets only the fields the customer does not have (a merge: the survivor's own win)."""
        k = self.keys(customer_id).attributes
        for name, value in values.items():
            await self._r.hsetnx(k, name, value)

    # Batches (a CRM import): one script or MGET per hash tag and step, never one command per
    # customer: a thousand customers fall into a few dozen slots.

    async def _per_slot(self, script, calls: list[tuple[str, list]]) -> list:
        """`script` once per slot over the (key, its args) of that slot (args: a count, then that
        many values); the replies per call, in order."""
        groups: dict[str, list[int]] = {}
        for n, (key, _) in enumerate(calls):
            groups.setdefault(_slot_tag(key), []).append(n)
        replies = await asyncio.gather(*(script(keys=[calls[n][0] for n in ns],
                                                args=[a for n in ns for a in calls[n][1]])
                                         for ns in groups.values()))
        out: list = [None] * len(calls)
        for ns, reply in zip(groups.values(), replies):
            for n, r in zip(ns, reply):
                out[n] = r
        return out

    async def _mget(self, keys: list[str]) -> list:
        groups: dict[str, list[int]] = {}
        for n, key in enumerate(keys):
            groups.setdefault(_slot_tag(key), []).append(n)
        replies = await asyncio.gather(*(self._r.mget([keys[n] for n in ns]) for ns in groups.values()))
        out: list = [None] * len(keys)
        for ns, reply in zip(groups.values(), replies):
            for n, r in zip(ns, reply):
                out[n] = None if r is None else _s(r)
        return out

    async def canonical_many(self, customer_ids: list[str], max_hops: int) -> list[str | None]:
        """Each id followed through its merge pointers, one round per hop; None where the chain
        is longer than `max_hops`."""
        out: list[str | None] = list(customer_ids)
        pending = list(range(len(customer_ids)))
        for _ in range(max_hops):
            if not pending:
                return out
            moved = []
            for n, nxt in zip(pending, await self._mget([self.keys(out[n]).merged_into for n in pending])):
                if nxt is not None and nxt != out[n]:
                    out[n] = nxt
                    moved.append(n)
            pending = moved
        for n in pending:
            out[n] = None
        return out

    async def known(self, customer_ids: list[str]) -> list[bool]:
        """Whether the recommender holds anything of each customer: history, identifiers,
        visits, attributes or a merge pointer (redeemed offers and aliases come with these)."""
        groups: dict[str, list[int]] = {}
        for n, c in enumerate(customer_ids):
            groups.setdefault(customer_shard_tag(self.keys(c).shard), []).append(n)

        def owned(c: str) -> list[str]:
            k = self.keys(c)
            return [k.history, k.identifiers, k.visits, k.attributes, k.merged_into]

        replies = await asyncio.gather(*(self._exists_many(keys=[key for n in ns for key in owned(customer_ids[n])],
                                                           args=[5]) for ns in groups.values()))
        out = [False] * len(customer_ids)
        for ns, reply in zip(groups.values(), replies):
            for n, r in zip(ns, reply):
                out[n] = bool(int(r))
        return out

    async def identifier_owners(self, identifiers: list[str]) -> list[str | None]:
        """`identifier_owner` of each."""
        return await self._mget([self._idkey(i) for i in identifiers])

    async def claim_identifiers(self, claims: list[tuple[str, str]]) -> list[bool]:
        """`claim_identifier` of each (identifier, customer): True where the identifier was free
        and is now the customer's."""
        won = [bool(int(r)) for r in await self._per_slot(self._setnx_many, [
            (self._idkey(identifier), [1, customer_id]) for identifier, customer_id in claims])]
        mine: dict[str, list[str]] = {}
        for (identifier, customer_id), ok in zip(claims, won):
            if ok:
                mine.setdefault(customer_id, []).append(identifier)
        await self._per_slot(self._sadd_many, [(self.keys(c).identifiers, [len(ids), *ids]) for c, ids in mine.items()])
        return won

    async def release_identifiers(self, claims: list[tuple[str, str]]) -> None:
        """Undoes claims (an item that could not be linked whole): each only if still its customer's."""
        for identifier, customer_id in claims:
            await self.forget_identifier(identifier, customer_id)

    async def delete_data(self, customer_id: str, *, keep_pointer: bool) -> None:
        """Removes the customer's own keys; a merged customer keeps its pointer to the survivor."""
        k = self.keys(customer_id)
        doomed = [key for key in k.all_owned() if not (keep_pointer and key == k.merged_into)]
        await self._r.delete(*doomed)

    async def mark_erasing(self, members: list[str]) -> None:
        """Before an erasure deletes anything: each member remembers the whole group."""
        for m in members:
            await self._r.sadd(self.keys(m).erasing, *members)

    async def erasing_members(self, customer_id: str) -> list[str]:
        """The group of an erasure of this customer that started and did not finish."""
        return sorted(m.decode() for m in await self._r.smembers(self.keys(customer_id).erasing))

    async def clear_erasing(self, members: list[str]) -> None:
        for m in members:
            await self._r.delete(self.keys(m).erasing)

    async def drop_from_streams(self, customer_ids: set[str], extra_streams: list[str]) -> int:
        """Deletes not-yet-trimmed entries of these customers (erasure) from their interaction
        streams, the dead letters beside them, and `extra_streams` (full scans: erasures are rare)."""
        needles = [orjson.dumps(c) for c in customer_ids]
        dropped = 0
        streams = {self.keys(c).stream for c in customer_ids}
        streams |= {s.replace(":interactions:v1", ":interactions:dead") for s in streams}
        for stream in sorted(streams) + extra_streams:
            start = "-"
            while True:
                page = await self._r.xrange(stream, min=start, count=2000)
                if not page:
                    break
                doomed = []
                for entry_id, fields in page:
                    data = b" ".join(v if isinstance(v, bytes) else str(v).encode() for v in fields.values())
                    if any(b'"customer_id":' + n in data or b'"merged":' + n in data or b'"into":' + n in data
                           for n in needles):
                        doomed.append(entry_id)
                if doomed:
                    dropped += await self._r.xdel(stream, *doomed)
                last = _s(page[-1][0])
                ms, seq = last.split("-")
                start = f"{ms}-{int(seq) + 1}"
        return dropped
