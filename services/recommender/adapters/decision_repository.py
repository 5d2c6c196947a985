"""Visit decisions in Redis: which visits of a customer were decided, their recent pushes (for
the daily cap and the store cooldown), the visits that have ended, and the shard's decisions and
push-job streams.

Every key lives in the customer's `{cs:NNN}` hash tag, beside the shard's two streams, so that
"not decided yet, counters as read → record the decision, count the push, log the decision,
queue the job" is one script: a crash leaves either all of it or none, and a redelivered or
raced event finds the visit decided. The per-customer keys have fixed names (no key per visit)
so that erasure and merges can list them without a SCAN.

Keys (customer part: `vicino:{cs:NNN}:customer:<id>:`):
- `decided_visits`  zset visit_id -> decided at (epoch s); trimmed to `decision_ttl_s`
- `pushes`          zset decision_id -> sent at; sent and holdout would-be pushes of the last 48 h
- `store_pushes`    zset store_id -> last push at; trimmed to `store_cooldown_s`
- `ended_visits`    zset visit_id -> exit ts; trimmed to `decision_ttl_s` (the push gateway reads it)
Streams: `vicino:{cs:NNN}:decisions:v1` (DecisionV1), `vicino:{cs:NNN}:push:jobs:v1` (PushJobV1).
"""
from __future__ import annotations

from dataclasses import dataclass

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
DECISIONS_MAXLEN = 1_000_000      # safety caps per shard stream; consumers trim what they have read
# a last resort against a flood between two housekeeping runs: the scheduler's trim (consumed
# entries, then VICINO_STREAM_HARD_CAP, counted and logged) keeps the stream well below it. What
# this cap trims is counted too (the stream's trimmed-unconsumed counter): the jobs are unsent.
PUSH_JOBS_MAXLEN = 2_000_000

# KEYS: decided_visits, pushes, store_pushes, merged_into, decisions stream, push jobs stream, its
# trimmed-unconsumed counter.
# ARGV: visit_id, now, decision_ttl_s, day_start, expected pushes today, expected last push at the
# store ('' none), store_id, counts ('1' a push or a holdout would-be push), decision_id,
# store_cooldown_s, decision JSON, job JSON ('' none), decisions maxlen, jobs maxlen, push window s.
# Returns 'ok', 'duplicate' (the visit is decided), 'stale' (the counters moved since they were
# read: decide again) or 'moved:<id>' (the customer was merged away).
_RECORD = memory_guarded("""
local merged = redis.call('GET', KEYS[4])
if merged then return 'moved:' .. merged end
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'duplicate' end
if redis.call('ZCOUNT', KEYS[2], ARGV[4], '+inf') ~= tonumber(ARGV[5]) then return 'stale' end
local last = redis.call('ZSCORE', KEYS[3], ARGV[7])
if (last == false) ~= (ARGV[6] == '') or (last and tonumber(last) ~= tonumber(ARGV[6])) then return 'stale' end
redis.call('ZADD', KEYS[1], now, ARGV[1])
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
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[13], '*', 'v', '1', 'data', ARGV[11])
if ARGV[12] ~= '' then
  redis.call('XADD', KEYS[6], '*', 'v', '1', 'data', ARGV[12])
  if redis.call('XLEN', KEYS[6]) > tonumber(ARGV[14]) then
    local trimmed = redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', ARGV[14])
    if trimmed > 0 then redis.call('INCRBY', KEYS[7], trimmed) end
  end
end
return 'ok'
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


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


class DecisionKeys:
    __slots__ = ("customer_id", "shard", "decided_visits", "pushes", "store_pushes", "ended_visits", "merged_into",
                 "decisions", "push_jobs")

    def __init__(self, customer_id: str, shards: int) -> None:
        self.customer_id = customer_id
        self.shard = customer_shard(customer_id, shards)
        base = f"vicino:{customer_shard_tag(self.shard)}:customer:{customer_id}"
        self.decided_visits = base + ":decided_visits"
        self.pushes = base + ":pushes"
        self.store_pushes = base + ":store_pushes"
        self.ended_visits = ended_visits_key(customer_id, shards)
        self.merged_into = CustomerKeys(customer_id, shards).merged_into
        self.decisions = decisions_stream_key(self.shard)
        self.push_jobs = push_jobs_stream_key(self.shard)

    def all_owned(self) -> list[str]:
        """Every per-customer key of the decisions (not the shard streams): for erasure and merges."""
        return [self.decided_visits, self.pushes, self.store_pushes, self.ended_visits]


@dataclass(frozen=True)
class Counters:
    """What the policy reads about a customer's visit and recent pushes."""

    visit_decided: bool
    visit_ended: bool
    pushes_today: int
    last_push_at_store: float | None


class DecisionRepository:
    def __init__(self, redis, customer_shards: int, decision_ttl_s: float, store_cooldown_s: float,
                 replica_wait: ReplicaWait | None = None, *, erasure_key: bytes,
                 push_jobs_maxlen: int = PUSH_JOBS_MAXLEN) -> None:
        """`replica_wait`: a recorded decision (with its push job) is on a replica before the
        geo event is acknowledged, so that a failover cannot lose the push of an acknowledged event.
        `erasure_key`: the erasure register's (`settings.erasure_register_key()`).
        `push_jobs_maxlen`: the push-job streams' last-resort cap (what it trims is counted)."""
        self._r = redis
        self.erasure_key = erasure_key
        self._push_jobs_maxlen = push_jobs_maxlen
        self._replicated = replica_wait
        self._shards = customer_shards
        self._ttl = decision_ttl_s
        self._cooldown = store_cooldown_s
        self._record = redis.register_script(_RECORD)
        self._end_visit = redis.register_script(_END_VISIT)

    def keys(self, customer_id: str) -> DecisionKeys:
        return DecisionKeys(customer_id, self._shards)

    async def erased_at(self, customer_id: str) -> float | None:
        return await ErasureRegister(self._r, self.erasure_key).erased_at(customer_id)

    async def counters(self, customer_id: str, visit_id: str, store_id: str, day_start: float, now: float) -> Counters:
        k = self.keys(customer_id)
        pipe = self._r.pipeline(transaction=False)  # one slot: one round trip
        pipe.zscore(k.decided_visits, visit_id)
        pipe.zscore(k.ended_visits, visit_id)
        pipe.zcount(k.pushes, day_start, "+inf")
        pipe.zscore(k.store_pushes, store_id)
        decided, ended, today, last = await pipe.execute()
        return Counters(visit_decided=decided is not None and decided >= now - self._ttl,
                        visit_ended=ended is not None, pushes_today=int(today), last_push_at_store=last)

    async def record(self, customer_id: str, read: Counters, day_start: float, now: float, decision: DecisionV1,
                     job: PushJobV1 | None, counts_as_push: bool) -> str | Moved:
        """The decision, its push job and the counters, atomically, unless the visit is decided or
        the counters moved since `read`. Returns 'ok', 'duplicate', 'stale' or `Moved(<id>)`."""
        k = self.keys(customer_id)
        out = await self._record(
            keys=[k.decided_visits, k.pushes, k.store_pushes, k.merged_into, k.decisions, k.push_jobs,
                  trimmed_unconsumed_key(k.push_jobs)],
            args=[decision.visit_id, repr(now), repr(self._ttl), repr(day_start), read.pushes_today,
                  "" if read.last_push_at_store is None else repr(read.last_push_at_store), decision.store_id,
                  "1" if counts_as_push else "0", decision.decision_id, repr(self._cooldown),
                  decision.model_dump_json(by_alias=True), job.model_dump_json(by_alias=True) if job else "",
                  DECISIONS_MAXLEN, self._push_jobs_maxlen, PUSH_WINDOW_S])
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
                     "ended_visits": self._ttl}
        for name, ttl_s in lifetimes.items():
            entries = await self._r.zrange(getattr(a, name), 0, -1, withscores=True)
            if entries and ttl_s > 0:
                await self._r.zadd(getattr(b, name), {m: sc for m, sc in entries}, gt=True)
                await self._r.pexpire(getattr(b, name), int(ttl_s * 1000))
        await self.delete(gone)

    async def delete(self, customer_id: str) -> None:
        """Every per-customer decision key (erasure). The shard streams are scanned separately."""
        await self._r.delete(*self.keys(customer_id).all_owned())
