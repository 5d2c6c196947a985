"""The offer catalogue, store stock and campaign rules in Redis.

Keys (hash tags keep each multi-key script in one Cluster slot):
- `vicino:{offers}:catalog`  hash: offer_id -> the offer's JSON (domain.offers.Offer).
- `vicino:{offers}:seq`      counter: bumped by every write of the catalogue.
- `vicino:{offers}:changes`  stream: {seq, op: upsert|delete, ids: JSON list}, trimmed to ~10,000.
  A replica keeps the whole catalogue in memory with the seq it was loaded at, and reloads
  when the seq moves; a write, its seq bump and its change entry are one script
  (vicino.services.runtime.change_logged_hash, as for geo's stores).
- `vicino:{inv:<store_id>}:stock`  hash: item_id -> units held (a non-negative integer).
- `vicino:{inv:<store_id>}:stock_version`  counter: bumped by every write of that stock, in the
  same script, so a reader that keeps a store's stock re-reads it only when it moved.
- `vicino:{rules}:campaign`  hash: revision (integer, 0 = never written), rules (JSON of
  domain.campaign_rules.CampaignRules), updated_at (epoch seconds).

Read only, owned by the geo service: `vicino:{stores}:features` (vicino.services.kernel.contracts.stores).
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from vicino.services.runtime.change_logged_hash import ChangeLoggedHash
from vicino.services.kernel.contracts.stores import STORES_FEATURES
from ...runtime.redis_scripts import memory_guarded

OFFERS = "vicino:{offers}:catalog"
OFFERS_SEQ = "vicino:{offers}:seq"
OFFERS_CHANGES = "vicino:{offers}:changes"
RULES = "vicino:{rules}:campaign"
CHUNK = 2000


def stock_key(store_id: str) -> str:
    return f"vicino:{{inv:{store_id}}}:stock"


def stock_version_key(store_id: str) -> str:
    return f"vicino:{{inv:{store_id}}}:stock_version"


# Full replace: the old stock and the new never mix, whatever reads in between.
_REPLACE_STOCK = memory_guarded("""
redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
""")

# Deltas: all or nothing. First every result is checked; if one would be negative nothing is
# written and the culprits come back as {0, item, held, delta, ...}; else the deltas are applied
# with HINCRBY (exact integer arithmetic) and {1, item, new, ...} comes back.
_PATCH_STOCK = memory_guarded("""
local refused = {0}
for i = 1, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if held + tonumber(ARGV[i + 1]) < 0 then
    refused[#refused + 1] = ARGV[i]
    refused[#refused + 1] = held
    refused[#refused + 1] = ARGV[i + 1]
  end
end
if #refused > 1 then return refused end
redis.call('INCR', KEYS[2])
local out = {1}
for i = 1, #ARGV, 2 do
  out[#out + 1] = ARGV[i]
  out[#out + 1] = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return out
""")

# Compare-and-set on the revision: ARGV[1] is the expected revision, or '' for "whatever it is".
_PUT_RULES = memory_guarded("""
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= current then return {0, current} end
local revision = current + 1
redis.call('HSET', KEYS[1], 'revision', revision, 'rules', ARGV[2], 'updated_at', ARGV[3])
return {1, revision}
""")


@dataclass(frozen=True, slots=True)
class StoredRules:
    revision: int
    rules: dict | None       # None: never written (defaults apply)
    updated_at: float | None


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    applied: bool
    quantities: dict[str, int]          # applied: the new quantities of the patched items
    refused: list[tuple[str, int, int]]  # not applied: (item, held, delta) that would go below 0


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CatalogRepository:
    def __init__(self, redis, changes_maxlen: int = 10_000) -> None:
        self._r = redis
        self._offers = ChangeLoggedHash(redis, OFFERS, OFFERS_SEQ, OFFERS_CHANGES, changes_maxlen=changes_maxlen,
                                        chunk=CHUNK)
        self._replace_stock = redis.register_script(_REPLACE_STOCK)
        self._patch_stock = redis.register_script(_PATCH_STOCK)
        self._put_rules = redis.register_script(_PUT_RULES)

    # offers ------------------------------------------------------------------------------------

    async def upsert_offers(self, records: list[tuple[str, bytes]]) -> list[bool]:
        """Writes (offer_id, JSON) pairs, each chunk in one script; returns a created flag per pair."""
        created, _seqs = await self._offers.upsert(records)
        return created

    async def delete_offer(self, offer_id: str) -> bool:
        existed, _seq = await self._offers.delete(offer_id)
        return existed

    async def offers_seq(self) -> int:
        raw = await self._r.get(OFFERS_SEQ)
        return int(raw) if raw is not None else 0

    async def all_offers(self) -> list[bytes]:
        """Every offer's JSON, read in pages (HSCAN) so a big catalogue never blocks Redis."""
        out: list[bytes] = []
        cursor = 0
        while True:
            cursor, page = await self._r.hscan(OFFERS, cursor=cursor, count=5000)
            out += page.values()
            if cursor == 0:
                return out

    # stores (the geo service's) and their stock -----------------------------------------------------

    async def store_feature(self, store_id: str) -> dict | None:
        raw = await self._r.hget(STORES_FEATURES, store_id)
        return None if raw is None else orjson.loads(raw)

    async def store_exists(self, store_id: str) -> bool:
        return bool(await self._r.hexists(STORES_FEATURES, store_id))

    async def stock(self, store_id: str) -> dict[str, int]:
        raw = await self._r.hgetall(stock_key(store_id))
        return {_text(k): int(v) for k, v in raw.items()}

    async def stock_version(self, store_id: str) -> int:
        return int(await self._r.get(stock_version_key(store_id)) or 0)

    async def stock_of(self, store_id: str, item_ids: list[str]) -> dict[str, int]:
        """Only the given items (those the offers name), not a store's whole assortment."""
        out: dict[str, int] = {}
        for start in range(0, len(item_ids), CHUNK):
            chunk = item_ids[start:start + CHUNK]
            values = await self._r.hmget(stock_key(store_id), chunk)
            out.update({item: int(v) for item, v in zip(chunk, values) if v is not None})
        return out

    async def replace_stock(self, store_id: str, quantities: dict[str, int]) -> None:
        args: list = []
        for item, qty in quantities.items():
            args += [item, qty]
        await self._replace_stock(keys=[stock_key(store_id), stock_version_key(store_id)], args=args)

    async def patch_stock(self, store_id: str, deltas: dict[str, int]) -> PatchOutcome:
        args: list = []
        for item, delta in deltas.items():
            args += [item, delta]
        out = await self._patch_stock(keys=[stock_key(store_id), stock_version_key(store_id)], args=args)
        triples = out[1:]
        if int(out[0]) == 1:
            return PatchOutcome(True, {_text(triples[i]): int(triples[i + 1]) for i in range(0, len(triples), 2)}, [])
        refused = [(_text(triples[i]), int(triples[i + 1]), int(_text(triples[i + 2])))
                   for i in range(0, len(triples), 3)]
        return PatchOutcome(False, {}, refused)

    # campaign rules -------------------------------------------------------------------------------

    async def rules(self) -> StoredRules:
        raw = {_text(k): v for k, v in (await self._r.hgetall(RULES)).items()}
        if not raw:
            return StoredRules(0, None, None)
        return StoredRules(int(raw["revision"]), orjson.loads(raw["rules"]), float(raw["updated_at"]))

    async def put_rules(self, rules_json: bytes, expected_revision: int | None, now: float) -> tuple[bool, int]:
        """(written, revision): the new revision, or the current one when it was not `expected_revision`."""
        out = await self._put_rules(keys=[RULES], args=["" if expected_revision is None else expected_revision,
                                                         rules_json, repr(now)])
        return bool(int(out[0])), int(out[1])
