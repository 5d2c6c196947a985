"""Store upserts and deletes: validate everything first, write the good ones, apply locally."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from vicino.services.kernel.problems import InvalidInput, NotFound

from ..adapters.store_repository import StoreRepository
from ..domain.geojson_codec import FeatureRejected, feature_id, store_from_feature
from ..domain.h3_cells import cover, cover_many
from ..domain.stores import Store
from .index_sync import IndexSync

MAX_BULK_FEATURES = 200_000


@dataclass
class BulkResult:
    created: int = 0
    updated: int = 0
    rejected: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)


def _validate_all(features: list[Any]) -> tuple[list[tuple[Store, list[int]]], list[dict], list[dict]]:
    good: dict[str, Store] = {}
    rejected: list[dict] = []
    warnings: list[dict] = []
    for i, feature in enumerate(features):
        try:
            store, warns = store_from_feature(feature)
        except FeatureRejected as e:
            rejected.append({"index": i, "id": e.store_id or feature_id(feature), "reason": e.reason})
            continue
        if store.store_id in good:
            # the last occurrence wins, as a sequence of PUTs would; say so
            warnings.append({"index": i, "id": store.store_id, "warning": "duplicate id in the collection; the last one wins"})
        good[store.store_id] = store
        warnings += [{"index": i, "id": store.store_id, "warning": w} for w in warns]
    stores = list(good.values())
    return list(zip(stores, cover_many([s.fence for s in stores]))), rejected, warnings


class StoreCatalogue:
    def __init__(self, repo: StoreRepository, sync: IndexSync) -> None:
        self.repo = repo
        self.sync = sync

    async def put(self, store_id: str, feature: Any) -> tuple[dict, bool, list[str]]:
        try:
            store, warnings = await asyncio.to_thread(store_from_feature, feature, store_id)
        except FeatureRejected as e:
            raise InvalidInput(e.reason) from None
        cells = await asyncio.to_thread(cover, store.fence)
        created, seqs = await self.repo.upsert([(store_id, store.feature)])
        self.sync.mark_own(seqs)
        await self.sync.apply([(store_id, store, cells)])
        return store.feature, created[0], warnings

    async def bulk(self, collection: Any) -> BulkResult:
        if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
            raise InvalidInput("expected a GeoJSON object with \"type\": \"FeatureCollection\"")
        features = collection.get("features")
        if not isinstance(features, list):
            raise InvalidInput("FeatureCollection.features must be a list")
        if len(features) > MAX_BULK_FEATURES:
            raise InvalidInput(f"{len(features)} features; at most {MAX_BULK_FEATURES} per request")
        good, rejected, warnings = await asyncio.to_thread(_validate_all, features)
        result = BulkResult(rejected=rejected, warnings=warnings)
        if good:
            created, seqs = await self.repo.upsert([(s.store_id, s.feature) for s, _ in good])
            self.sync.mark_own(seqs)
            await self.sync.apply([(s.store_id, s, cells) for s, cells in good])
            result.created = sum(created)
            result.updated = len(created) - result.created
        return result

    async def get(self, store_id: str) -> dict:
        feature = await self.repo.get(store_id)
        if feature is None:
            raise NotFound(f"store {store_id!r} does not exist")
        return feature

    async def delete(self, store_id: str) -> None:
        existed, seq = await self.repo.delete(store_id)
        if not existed:
            raise NotFound(f"store {store_id!r} does not exist")
        self.sync.mark_own([seq])
        await self.sync.apply([(store_id, None, None)])
