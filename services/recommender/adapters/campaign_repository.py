"""Campaigns in Redis: the documents, their change counter, and each campaign's budget.

Keys:
- `vicino:{campaigns}:docs`  hash campaign_id -> JSON {revision, created_at, updated_at, spec}
- `vicino:{campaigns}:revisions`  hash campaign_id -> revision (what If-Match is checked against)
- `vicino:{campaigns}:seq`   integer, bumped by every write (readers reload their copy when it moves)
- `vicino:{cp:<campaign_id>}:budget`  hash: `total` and `<YYYY-MM-DD>` (the campaign's time zone)
  -> pushes sent. A send reserves its unit before its decision is recorded and gives it back if
  the record does not happen, so a budget is never overspent; a crash between the two loses
  one unit (the campaign stops one push early), never adds one.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from ..domain.campaigns import Campaign, CampaignIn
from ...runtime.redis_scripts import memory_guarded

DOCS = "vicino:{campaigns}:docs"
REVISIONS = "vicino:{campaigns}:revisions"
SEQ = "vicino:{campaigns}:seq"


def budget_key(campaign_id: str) -> str:
    return f"vicino:{{cp:{campaign_id}}}:budget"


# KEYS: docs, revisions, seq. ARGV: campaign_id, expected revision, document JSON (written with
# revision expected + 1; '' deletes). Returns the new revision, or -<current> - 1 when the
# expected one is not current. (The revision is kept beside the document: Lua's cjson would turn
# an empty list of the document into an object.)
_WRITE = memory_guarded("""
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then return -current - 1 end
redis.call('INCR', KEYS[3])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], current + 1)
return current + 1
""")

# KEYS: budget. ARGV: day, per-day limit ('' none), total limit ('' none). 1 reserved, 0 spent.
_RESERVE = memory_guarded("""
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
local today = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if ARGV[3] ~= '' and total >= tonumber(ARGV[3]) then return 0 end
if ARGV[2] ~= '' and today >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'total', 1)
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
""")


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def decode(campaign_id: str, raw) -> Campaign:
    doc = orjson.loads(raw)
    return Campaign(campaign_id, int(doc["revision"]), CampaignIn.model_validate(doc["spec"]),
                    float(doc["created_at"]), float(doc["updated_at"]))


@dataclass(frozen=True)
class Spend:
    today: int
    total: int


class CampaignRepository:
    def __init__(self, redis) -> None:
        self._r = redis
        self._write = redis.register_script(_WRITE)
        self._reserve = redis.register_script(_RESERVE)

    async def seq(self) -> int:
        return int(await self._r.get(SEQ) or 0)

    async def all(self) -> tuple[int, list[Campaign]]:
        """(seq, every campaign) as of one instant."""
        pipe = self._r.pipeline(transaction=True)  # one slot: the seq matches the documents
        pipe.get(SEQ)
        pipe.hgetall(DOCS)
        seq, docs = await pipe.execute()
        return int(seq or 0), sorted((decode(_s(k), v) for k, v in docs.items()), key=lambda c: c.campaign_id)

    async def get(self, campaign_id: str) -> Campaign | None:
        raw = await self._r.hget(DOCS, campaign_id)
        return None if raw is None else decode(campaign_id, raw)

    async def write(self, campaign_id: str, expected_revision: int, spec: CampaignIn | None, created_at: float,
                    now: float) -> int | None:
        """Writes (or, `spec` None, deletes) the campaign if it is still at `expected_revision`
        (0: absent). The new revision, or None when someone wrote it meanwhile."""
        doc = b"" if spec is None else orjson.dumps({"revision": expected_revision + 1, "created_at": created_at,
                                                     "updated_at": now, "spec": spec.model_dump(mode="json")})
        out = int(await self._write(keys=[DOCS, REVISIONS, SEQ], args=[campaign_id, expected_revision, doc]))
        return None if out < 0 else out

    async def reserve(self, campaign_id: str, day: str, per_day: int | None, total: int | None) -> bool:
        out = await self._reserve(keys=[budget_key(campaign_id)],
                                  args=[day, "" if per_day is None else per_day, "" if total is None else total])
        return bool(int(out))

    async def release(self, campaign_id: str, day: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hincrby(budget_key(campaign_id), "total", -1)
        pipe.hincrby(budget_key(campaign_id), day, -1)
        await pipe.execute()

    async def spend(self, campaign_ids: list[str], day_of: dict[str, str]) -> dict[str, Spend]:
        """Sends today (each campaign's own day) and in total."""
        if not campaign_ids:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for cid in campaign_ids:
            pipe.hmget(budget_key(cid), ["total", day_of[cid]])
        out = await pipe.execute()
        return {cid: Spend(int(today or 0), int(total or 0)) for cid, (total, today) in zip(campaign_ids, out)}
