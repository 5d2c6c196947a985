"""Keeps this replica's in-memory store index equal to Redis: full load, then the change log.

Expensive work (parsing features, covering fences with cells) runs in a worker thread; only
the cheap dict updates run on the event loop, in slices, so requests keep flowing while a
replica absorbs a 100k-store import.
"""
from __future__ import annotations

import asyncio
import logging
import time

from ..adapters.store_repository import StoreRepository
from ..domain.geojson_codec import FeatureRejected, store_from_feature
from ..domain.h3_cells import cover_many
from ..domain.store_index import StoreIndex
from ..domain.stores import Store

log = logging.getLogger("vicino.geo.index")

APPLY_SLICE = 2000


def prepare(features: list[tuple[str, dict | None]]) -> list[tuple[str, Store | None, list[int] | None]]:
    """Parse and cover, off the event loop. A feature that no longer parses is dropped (logged)."""
    parsed: list[tuple[str, Store | None]] = []
    for sid, feature in features:
        if feature is None:
            parsed.append((sid, None))
            continue
        try:
            store, _ = store_from_feature(feature, sid)
        except FeatureRejected as e:
            log.error("stored feature no longer valid, skipped", extra={"fields": {"store_id": sid, "reason": e.reason}})
            parsed.append((sid, None))
            continue
        parsed.append((sid, store))
    covers = iter(cover_many([s.fence for _, s in parsed if s is not None]))
    return [(sid, store, next(covers) if store is not None else None) for sid, store in parsed]


class IndexSync:
    def __init__(self, repo: StoreRepository) -> None:
        self.repo = repo
        self.index = StoreIndex()
        self.loaded = False
        self.last_seq = 0
        self._last_entry = b"0-0"
        self._own_seqs: set[int] = set()
        self.reloads = 0

    async def load_all(self) -> None:
        started = time.perf_counter()
        entry, seq = await self.repo.change_log_head()
        features = [(sid, f) async for sid, f in self.repo.scan_all()]
        prepared = await asyncio.to_thread(prepare, features)
        index = StoreIndex()
        for sid, store, cells in prepared:
            if store is not None:
                index.upsert(store, cells)
        self.index = index  # swap: readers see the old or the new index, never a mix
        self._last_entry, self.last_seq = entry, seq
        # Local writes made while this load ran went to the old index and may have been missed by
        # the scan: forget that they were applied, so the change log re-applies them (idempotent).
        self._own_seqs.clear()
        self.loaded = True
        self.reloads += 1
        log.info("store index loaded", extra={"fields": {"stores": len(index), "cells": index.cell_count,
                                                         "seq": seq, "seconds": round(time.perf_counter() - started, 3)}})

    async def apply(self, prepared: list[tuple[str, Store | None, list[int] | None]]) -> None:
        for start in range(0, len(prepared), APPLY_SLICE):
            for sid, store, cells in prepared[start:start + APPLY_SLICE]:
                if store is None:
                    self.index.remove(sid)
                else:
                    self.index.upsert(store, cells)
            await asyncio.sleep(0)

    def mark_own(self, seqs: list[int]) -> None:
        """Changes this replica already applied locally (read-your-writes); skip them in the log."""
        self._own_seqs.update(s for s in seqs if s > self.last_seq)

    async def poll_once(self, block_ms: int) -> int:
        changes = await self.repo.changes_after(self._last_entry, block_ms)
        applied = 0
        for ch in changes:
            if ch.seq != self.last_seq + 1 and ch.seq > self.last_seq:
                log.warning("gap in the store change log, reloading", extra={"fields": {"expected": self.last_seq + 1, "got": ch.seq}})
                await self.load_all()
                return applied
            self._last_entry, self.last_seq = ch.entry_id, max(self.last_seq, ch.seq)
            if ch.seq in self._own_seqs:
                self._own_seqs.discard(ch.seq)
                continue
            features = await self.repo.fetch(ch.ids)
            prepared = await asyncio.to_thread(prepare, list(zip(ch.ids, features)))
            await self.apply(prepared)
            applied += len(ch.ids)
        return applied

    async def follow(self, stop: asyncio.Event, block_ms: int = 2000) -> None:
        while not stop.is_set():
            try:
                await self.poll_once(block_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store change log follow failed; retrying")
                await asyncio.sleep(1.0)
