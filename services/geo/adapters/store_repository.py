"""Stores in Redis: a hash of normalised features and a change log that replicas follow.

Each write (a chunk of a bulk upsert, or a delete) is one script of the kernel's
ChangeLoggedHash: write the features, bump the sequence, append a change entry. A replica that sees a gap in the sequence (entries trimmed
while it was away) reloads everything instead of guessing.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from vicino.services.runtime.change_logged_hash import ChangeLoggedHash
from .redis_keys import STORES_CHANGES, STORES_FEATURES, STORES_SEQ

CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Change:
    entry_id: bytes
    seq: int
    op: str
    ids: list[str]


class StoreRepository:
    def __init__(self, redis, changes_maxlen: int = 10_000) -> None:
        self._r = redis
        self._features = ChangeLoggedHash(redis, STORES_FEATURES, STORES_SEQ, STORES_CHANGES,
                                          changes_maxlen=changes_maxlen, chunk=CHUNK)

    async def upsert(self, features: list[tuple[str, dict]]) -> tuple[list[bool], list[int]]:
        """Writes (store_id, feature) pairs; returns a created flag per pair and the change seqs."""
        return await self._features.upsert([(sid, orjson.dumps(feature)) for sid, feature in features])

    async def delete(self, store_id: str) -> tuple[bool, int]:
        return await self._features.delete(store_id)

    async def get(self, store_id: str) -> dict | None:
        raw = await self._r.hget(STORES_FEATURES, store_id)
        return None if raw is None else orjson.loads(raw)

    async def fetch(self, store_ids: list[str]) -> list[dict | None]:
        out: list[dict | None] = []
        for start in range(0, len(store_ids), CHUNK):
            chunk = store_ids[start:start + CHUNK]
            out += [None if r is None else orjson.loads(r) for r in await self._r.hmget(STORES_FEATURES, chunk)]
        return out

    async def count(self) -> int:
        return int(await self._r.hlen(STORES_FEATURES))

    async def change_log_head(self) -> tuple[bytes, int]:
        """The newest change entry id and seq; ("0-0", 0) on an empty log."""
        entries = await self._r.xrevrange(STORES_CHANGES, count=1)
        if not entries:
            return b"0-0", 0
        entry_id, fields = entries[0]
        return entry_id, int(fields[b"seq"])

    async def scan_all(self):
        """Yields (store_id, feature) for every stored store, in chunks (HSCAN, not HGETALL)."""
        cursor = 0
        while True:
            cursor, page = await self._r.hscan(STORES_FEATURES, cursor=cursor, count=5000)
            for sid, raw in page.items():
                yield sid.decode(), orjson.loads(raw)
            if cursor == 0:
                break

    async def changes_after(self, entry_id: bytes, block_ms: int) -> list[Change]:
        reply = await self._r.xread({STORES_CHANGES: entry_id}, count=500, block=block_ms)
        out: list[Change] = []
        for _stream, entries in reply or []:
            for eid, fields in entries:
                out.append(Change(eid, int(fields[b"seq"]), fields[b"op"].decode(),
                                  orjson.loads(fields[b"ids"])))
        return out
