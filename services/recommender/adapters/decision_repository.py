"""Visit decisions in Redis: which visits of a customer were decided, their recent pushes (for
the daily cap and the store cooldown), the visits that have ended, and the shard's decisions and
push-job streams.

Every key lives in the customer's `{cs:NNN}` hash tag, beside the shard's two streams, so that
"not decided yet, counters as read → record the decision, count the push, log the decision,
queue the job" is one script: a crash leaves either all of it or none, and a redelivered or
raced event finds the visit decided. The per-customer keys have fixed names (no key per visit)
so that erasure and merges can list them without a SCAN.

Keys (customer part: `vicino:{cs:NNN}:customer:<id>:`):
- `decided_visits`  zset -> decided at (epoch s); trimmed to `decision_ttl_s`. Member `visit_id`
                    once the visit got its push (or a holdout would-be push): final; member
                    `visit_id#enter` / `visit_id#dwell` when that event was decided without one,
                    so that the visit's other event type still gets its try (a campaign on dwell
                    after one on enter found nothing to send).
- `campaign_pushes` zset `<campaign_id>|<decision_id>` -> at; the customer's pushes per campaign
                    (and holdout would-be pushes), last 8 days: a campaign's daily and weekly caps
- `campaign_totals` hash campaign_id -> pushes ever: a campaign's per-customer total cap
- `campaign_store_pushes` zset `<campaign_id>|<store_id>` -> last push at; a campaign's cooldown
- `decision_index`  zset decision_id -> decided at, and `decision_docs` hash decision_id ->
                    DecisionV1 JSON: the customer's last DECISIONS_KEPT decisions, for
                    "why did (or didn't) she get a push" (GET /v1/customers/{id}/decisions)
- `pushes`          zset decision_id -> sent at; sent and holdout would-be pushes of the last 48 h
- `store_pushes`    zset store_id -> last push at; trimmed to `store_cooldown_s`
- `ended_visits`    zset visit_id -> exit ts; trimmed to `decision_ttl_s` (the push gateway reads it)
Streams: `vicino:{cs:NNN}:decisions:v1` (DecisionV1), `vicino:{cs:NNN}:push:jobs:v1` (PushJobV1).
Per visit-id shard: `vicino:{vx:NNN}:visit_customers` hash visit_id -> customer_id and its
`:at` zset (trimmed to `decision_ttl_s`): which customer's decisions a visit id is in, for
`GET /v1/visits/{id}/decision`. Written right after the decision (an index: a crash in between
loses only the look-up by visit id, the customer's listing still has the decision).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from vicino.services.runtime.redis_client import ReplicaWait
from vicino.services.kernel.contracts.decisions import DecisionV1, decisions_stream_key
from vicino.services.kernel.contracts.interactions import customer_shard, customer_shard_tag
from vicino.services.kernel.contracts.push_jobs import PushJobV1, ended_visits_key, push_jobs_stream_key
from vicino.services.kernel.contracts.streams import trimmed_unconsumed_key

from ..domain.identity import Moved
from .customer_repository import parse_write_outcome
from .erasure_register import ErasureRegister
from .redis_keys import CustomerKeys
from ...runtime.redis_scripts import memory_guarded

PUSH_WINDOW_S = 2 * 86_400        # covers any local day, whatever the time zone
CAMPAIGN_WINDOW_S = 8 * 86_400    # covers any customer's "last 7 local days"
CAMPAIGN_COOLDOWN_MAX_S = 30 * 86_400  # domain.campaigns.MAX_COOLDOWN_S
DECISIONS_KEPT = 100              # per customer, for the explanations
DECISIONS_MAXLEN = 1_000_000      # safety caps per shard stream; consumers trim what they have read
# a last resort against a flood between two housekeeping runs: the scheduler's trim (consumed
# entries, then VICINO_STREAM_HARD_CAP, counted and logged) keeps the stream well below it. What
# this cap trims is counted too (the stream's trimmed-unconsumed counter): the jobs are unsent.
PUSH_JOBS_MAXLEN = 2_000_000

# KEYS: decided_visits, pushes, store_pushes, merged_into, decisions stream, push jobs stream, its
# trimmed-unconsumed counter, campaign_pushes, campaign_totals, campaign_store_pushes,
# decision_index, decision_docs.
# ARGV: visit_id, now, decision_ttl_s, day_start, expected pushes today, expected last push at the
# store ('' none), store_id, counts ('1' a push or a holdout would-be push), decision_id,
# store_cooldown_s, decision JSON, job JSON ('' none), decisions maxlen, jobs maxlen, push window s,
# event type, campaign_id ('' none), the campaign's store cooldown s, decisions kept, kept for s.
# Returns 'ok', 'duplicate' (the visit is decided), 'stale' (the counters moved since they were
# read: decide again) or 'moved:<id>' (the customer was merged away).
_RECORD = memory_guarded("""
local merged = redis.call('GET', KEYS[4])
if merged then return 'moved:' .. merged end
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local this_type = ARGV[1] .. '#' .. ARGV[16]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[1], this_type) then return 'duplicate' end
if redis.call('ZCOUNT', KEYS[2], ARGV[4], '+inf') ~= tonumber(ARGV[5]) then return 'stale' end
local last = redis.call('ZSCORE', KEYS[3], ARGV[7])
if (last == false) ~= (ARGV[6] == '') or (last and tonumber(last) ~= tonumber(ARGV[6])) then return 'stale' end
if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZADD', KEYS[1], now, this_type)
end
redis.call('PEXPIRE', KEYS[1], math.floor(ttl * 1000))
if ARGV[8] == '1' then
  local window = tonumber(ARGV[15])
  redis.call('ZADD', KEYS[2], now, ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - window))
  redis.call('PEXPIRE', KEYS[2], math.floor(window * 1000))
  local cooldown = tonumber(ARGV[10])
  if cooldown > 0 then
    redis.call('ZADD', KEYS[3], now, ARGV[7])
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - cooldown))
    redis.call('PEXPIRE', KEYS[3], math.ceil(cooldown * 1000))
  end
  if ARGV[17] ~= '' then
    redis.call('ZADD', KEYS[8], now, ARGV[17] .. '|' .. ARGV[9])
    redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', '(' .. (now - %(campaign_window)d))
    redis.call('PEXPIRE', KEYS[8], %(campaign_window)d * 1000)
    redis.call('HINCRBY', KEYS[9], ARGV[17], 1)
    if tonumber(ARGV[18]) > 0 then
      redis.call('ZADD', KEYS[10], now, ARGV[17] .. '|' .. ARGV[7])
      redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', '(' .. (now - %(cooldown_max)d))
      redis.call('PEXPIRE', KEYS[10], %(cooldown_max)d * 1000)
    end
  end
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[13], '*', 'v', '1', 'data', ARGV[11])
if ARGV[12] ~= '' then
  redis.call('XADD', KEYS[6], '*', 'v', '1', 'data', ARGV[12])
  if redis.call('XLEN', KEYS[6]) > tonumber(ARGV[14]) then
    local trimmed = redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', ARGV[14])
    if trimmed > 0 then redis.call('INCRBY', KEYS[7], trimmed) end
  end
end
redis.call('ZADD', KEYS[11], now, ARGV[9])
redis.call('HSET', KEYS[12], ARGV[9], ARGV[11])
local extra = redis.call('ZCARD', KEYS[11]) - tonumber(ARGV[19])
if extra > 0 then
  local old = redis.call('ZRANGE', KEYS[11], 0, extra - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[11], 0, extra - 1)
  redis.call('HDEL', KEYS[12], unpack(old))
end
redis.call('PEXPIRE', KEYS[11], math.floor(tonumber(ARGV[20]) * 1000))
redis.call('PEXPIRE', KEYS[12], math.floor(tonumber(ARGV[20]) * 1000))
return 'ok'
""" % {"campaign_window": CAMPAIGN_WINDOW_S, "cooldown_max": CAMPAIGN_COOLDOWN_MAX_S})

# KEYS: the visit index hash, its time zset. ARGV: visit_id, customer_id, now, drop before.
_INDEX_VISIT = memory_guarded("""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
return 1
""")

# KEYS: ended_visits, merged_into. ARGV: visit_id, exit ts, now, ttl_s.
_END_VISIT = memory_guarded("""
local merged = redis.call('GET', KEYS[2])
if merged then return 'moved:' .. merged end
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
redis.call('PEXPIRE', KEYS[1], math.floor(ttl * 1000))
return 'ok'
""")


def visit_index_key(visit_id: str, shards: int) -> str:
    return f"vicino:{{vx:{zlib.crc32(visit_id.encode()) % shards:03d}}}:visit_customers"


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


class DecisionKeys:
    __slots__ = ("customer_id", "shard", "decided_visits", "pushes", "store_pushes", "ended_visits", "merged_into",
                 "decisions", "push_jobs", "campaign_pushes", "campaign_totals", "campaign_store_pushes",
                 "decision_index", "decision_docs")

    def __init__(self, customer_id: str, shards: int) -> None:
        self.customer_id = customer_id
        self.shard = customer_shard(customer_id, shards)
        base = f"vicino:{customer_shard_tag(self.shard)}:customer:{customer_id}"
        self.decided_visits = base + ":decided_visits"
        self.pushes = base + ":pushes"
        self.store_pushes = base + ":store_pushes"
        self.campaign_pushes = base + ":campaign_pushes"
        self.campaign_totals = base + ":campaign_totals"
        self.campaign_store_pushes = base + ":campaign_store_pushes"
        self.decision_index = base + ":decision_index"
        self.decision_docs = base + ":decision_docs"
        self.ended_visits = ended_visits_key(customer_id, shards)
        self.merged_into = CustomerKeys(customer_id, shards).merged_into
        self.decisions = decisions_stream_key(self.shard)
        self.push_jobs = push_jobs_stream_key(self.shard)

    def all_owned(self) -> list[str]:
        """Every per-customer key of the decisions (not the shard streams): for erasure and merges."""
        return [self.decided_visits, self.pushes, self.store_pushes, self.ended_visits, self.campaign_pushes,
                self.campaign_totals, self.campaign_store_pushes, self.decision_index, self.decision_docs]


@dataclass(frozen=True)
class Counters:
    """What the policy reads about a customer's visit and recent pushes."""

    visit_decided: bool
    visit_ended: bool
    pushes_today: int
    last_push_at_store: float | None
    campaign_recent: dict[str, tuple[float, ...]] = field(default_factory=dict)  # campaign -> push times, 8 days
    campaign_totals: dict[str, int] = field(default_factory=dict)
    campaign_last_at_store: dict[str, float] = field(default_factory=dict)      # campaign -> last push here


class DecisionRepository:
    def __init__(self, redis, customer_shards: int, decision_ttl_s: float, store_cooldown_s: float,
                 replica_wait: ReplicaWait | None = None, *, erasure_key: bytes,
                 push_jobs_maxlen: int = PUSH_JOBS_MAXLEN, docs_ttl_s: float = 35 * 86_400) -> None:
        """`replica_wait`: a recorded decision (with its push job) is on a replica before the
        geo event is acknowledged, so that a failover cannot lose the push of an acknowledged event.
        `erasure_key`: the erasure register's (`settings.erasure_register_key()`).
        `push_jobs_maxlen`: the push-job streams' last-resort cap (what it trims is counted).
        `docs_ttl_s`: how long a customer's last decisions stay explainable (the KPIs' retention)."""
        self._r = redis
        self.erasure_key = erasure_key
        self._push_jobs_maxlen = push_jobs_maxlen
        self._replicated = replica_wait
        self._shards = customer_shards
        self._ttl = decision_ttl_s
        self._docs_ttl = max(decision_ttl_s, docs_ttl_s)
        self._cooldown = store_cooldown_s
        self._record = redis.register_script(_RECORD)
        self._end_visit = redis.register_script(_END_VISIT)
        self._index_visit = redis.register_script(_INDEX_VISIT)

    def keys(self, customer_id: str) -> DecisionKeys:
        return DecisionKeys(customer_id, self._shards)

    async def erased_at(self, customer_id: str) -> float | None:
        return await ErasureRegister(self._r, self.erasure_key).erased_at(customer_id)

    async def counters(self, customer_id: str, visit_id: str, store_id: str, day_start: float, now: float,
                       event_type: str = "dwell") -> Counters:
        k = self.keys(customer_id)
        pipe = self._r.pipeline(transaction=False)  # one slot: one round trip
        pipe.zmscore(k.decided_visits, [visit_id, f"{visit_id}#{event_type}"])
        pipe.zscore(k.ended_visits, visit_id)
        pipe.zcount(k.pushes, day_start, "+inf")
        pipe.zscore(k.store_pushes, store_id)
        pipe.zrangebyscore(k.campaign_pushes, now - CAMPAIGN_WINDOW_S, "+inf", withscores=True)
        pipe.hgetall(k.campaign_totals)
        pipe.zrangebyscore(k.campaign_store_pushes, now - CAMPAIGN_COOLDOWN_MAX_S, "+inf", withscores=True)
        decided, ended, today, last, recent, totals, at_stores = await pipe.execute()
        by_campaign: dict[str, list[float]] = {}
        for member, at in recent:
            by_campaign.setdefault(_s(member).rsplit("|", 1)[0], []).append(at)
        suffix = "|" + store_id
        last_here = {}
        for member, at in at_stores:
            m = _s(member)
            if m.endswith(suffix):
                last_here[m[:-len(suffix)]] = at
        return Counters(visit_decided=any(d is not None and d >= now - self._ttl for d in decided),
                        visit_ended=ended is not None, pushes_today=int(today), last_push_at_store=last,
                        campaign_recent={c: tuple(v) for c, v in by_campaign.items()},
                        campaign_totals={_s(c): int(n) for c, n in totals.items()},
                        campaign_last_at_store=last_here)

    async def record(self, customer_id: str, read: Counters, day_start: float, now: float, decision: DecisionV1,
                     job: PushJobV1 | None, counts_as_push: bool, campaign_cooldown_s: float = 0.0) -> str | Moved:
        """The decision, its push job and the counters, atomically, unless the visit is decided or
        the counters moved since `read`. Returns 'ok', 'duplicate', 'stale' or `Moved(<id>)`."""
        k = self.keys(customer_id)
        out = await self._record(
            keys=[k.decided_visits, k.pushes, k.store_pushes, k.merged_into, k.decisions, k.push_jobs,
                  trimmed_unconsumed_key(k.push_jobs), k.campaign_pushes, k.campaign_totals, k.campaign_store_pushes,
                  k.decision_index, k.decision_docs],
            args=[decision.visit_id, repr(now), repr(self._ttl), repr(day_start), read.pushes_today,
                  "" if read.last_push_at_store is None else repr(read.last_push_at_store), decision.store_id,
                  "1" if counts_as_push else "0", decision.decision_id, repr(self._cooldown),
                  decision.model_dump_json(by_alias=True), job.model_dump_json(by_alias=True) if job else "",
                  DECISIONS_MAXLEN, self._push_jobs_maxlen, PUSH_WINDOW_S, decision.event_type,
                  decision.campaign_id or "", repr(campaign_cooldown_s), DECISIONS_KEPT, repr(self._docs_ttl)])
        outcome = parse_write_outcome(out)
        if self._replicated is not None and outcome in ("ok", "duplicate"):
            await self._replicated.after_write(k.push_jobs)  # a duplicate: the first attempt may not have waited
        return outcome

    async def end_visit(self, customer_id: str, visit_id: str, exit_ts: float, now: float) -> str | Moved:
        k = self.keys(customer_id)
        out = await self._end_visit(keys=[k.ended_visits, k.merged_into],
                                    args=[visit_id, repr(exit_ts), repr(now), repr(self._ttl)])
        return parse_write_outcome(out)

    # merges and erasure (called by the identity and erasure use cases) ------------------------------

    async def absorb(self, gone: str, keep: str) -> None:
        """Moves `gone`'s decided visits, pushes and ended visits to `keep` (a merge), keeping the
        later time of each, then deletes `gone`'s keys. Idempotent; the two may be in different slots."""
        a, b = self.keys(gone), self.keys(keep)
        lifetimes = {"decided_visits": self._ttl, "pushes": PUSH_WINDOW_S, "store_pushes": self._cooldown,
                     "ended_visits": self._ttl, "campaign_pushes": CAMPAIGN_WINDOW_S,
                     "campaign_store_pushes": CAMPAIGN_COOLDOWN_MAX_S, "decision_index": self._docs_ttl}
        for name, ttl_s in lifetimes.items():
            entries = await self._r.zrange(getattr(a, name), 0, -1, withscores=True)
            if entries and ttl_s > 0:
                await self._r.zadd(getattr(b, name), {m: sc for m, sc in entries}, gt=True)
                await self._r.pexpire(getattr(b, name), int(ttl_s * 1000))
        totals = await self._r.hgetall(a.campaign_totals)
        for campaign, n in totals.items():
            await self._r.hincrby(b.campaign_totals, campaign, int(n))
        docs = await self._r.hgetall(a.decision_docs)
        if docs:
            await self._r.hset(b.decision_docs, mapping=docs)
            await self._r.pexpire(b.decision_docs, int(self._docs_ttl * 1000))
            for raw in docs.values():  # the visits' look-up now leads to the survivor
                d = DecisionV1.model_validate_json(raw)
                await self.index_visit(d.visit_id, keep, d.decided_at)
        await self.delete(gone)

    # explanations ----------------------------------------------------------------------------------

    async def recent_decisions(self, customer_id: str, limit: int, before: float | None) -> list[DecisionV1]:
        """The customer's kept decisions, newest first, decided before `before`."""
        k = self.keys(customer_id)
        ids = await self._r.zrevrangebyscore(k.decision_index, "+inf" if before is None else f"({before!r}", "-inf",
                                             start=0, num=limit)
        if not ids:
            return []
        docs = await self._r.hmget(k.decision_docs, ids)
        return [DecisionV1.model_validate_json(d) for d in docs if d is not None]

    async def index_visit(self, visit_id: str, customer_id: str, now: float) -> None:
        key = visit_index_key(visit_id, self._shards)
        await self._index_visit(keys=[key, key + ":at"], args=[visit_id, customer_id, repr(now),
                                                              repr(now - self._docs_ttl)])

    async def customer_of_visit(self, visit_id: str) -> str | None:
        raw = await self._r.hget(visit_index_key(visit_id, self._shards), visit_id)
        return None if raw is None else _s(raw)

    async def forget_visits(self, visit_ids: list[str]) -> None:
        """Erasure: the visit index entries of the customer's decisions."""
        for visit_id in visit_ids:
            key = visit_index_key(visit_id, self._shards)
            pipe = self._r.pipeline(transaction=True)
            pipe.hdel(key, visit_id)
            pipe.zrem(key + ":at", visit_id)
            await pipe.execute()

    async def delete(self, customer_id: str) -> None:
        """Every per-customer decision key and the visit index entries of its decisions (erasure,
        and the merged-away side of a merge). The shard streams are scanned separately."""
        k = self.keys(customer_id)
        docs = await self._r.hvals(k.decision_docs)
        for visit_id in sorted({DecisionV1.model_validate_json(d).visit_id for d in docs}):
            if await self.customer_of_visit(visit_id) == customer_id:
                await self.forget_visits([visit_id])
        await self._r.delete(*k.all_owned())
