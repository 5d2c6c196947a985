"""The in-memory store index of one replica: H3 cell -> candidate stores, then an exact test.

A fix costs one `latlng_to_cell`, one dict lookup and an exact test per candidate, whatever
the number of stores; no Redis round trip. Mutations happen on the event loop between
requests (no awaits inside), so readers never see a half-applied change.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import h3.api.basic_int as h3
import numpy as np

from .geodesy import haversine_many_m
from .h3_cells import RESOLUTION, cover
from .stores import Store

_EMPTY: tuple = ()


class StoreIndex:
    def __init__(self, stores: Iterable[Store] = ()) -> None:
        self._stores: dict[str, Store] = {}
        self._cells: dict[int, tuple[Store, ...]] = {}
        self._store_cells: dict[str, list[int]] = {}
        self._centres: tuple | None = None  # lazily built arrays for `nearby`
        for s in stores:
            self.upsert(s)

    def __len__(self) -> int:
        return len(self._stores)

    @property
    def cell_count(self) -> int:
        return len(self._cells)

    def get(self, store_id: str) -> Store | None:
        return self._stores.get(store_id)

    def stores(self) -> Iterable[Store]:
        return self._stores.values()

    def upsert(self, store: Store, cells: list[int] | None = None) -> None:
        self.remove(store.store_id)
        cells = cover(store.fence) if cells is None else cells
        table = self._cells
        for c in cells:
            table[c] = table.get(c, _EMPTY) + (store,)
        self._stores[store.store_id] = store
        self._store_cells[store.store_id] = cells
        self._centres = None

    def remove(self, store_id: str) -> bool:
        old = self._stores.pop(store_id, None)
        if old is None:
            return False
        table = self._cells
        for c in self._store_cells.pop(store_id, ()):
            rest = tuple(s for s in table.get(c, _EMPTY) if s is not old)
            if rest:
                table[c] = rest
            else:
                table.pop(c, None)
        self._centres = None
        return True

    def containing(self, lat: float, lon: float) -> Sequence[Store]:
        candidates = self._cells.get(h3.latlng_to_cell(lat, lon, RESOLUTION))
        if not candidates:
            return _EMPTY
        return [s for s in candidates if s.fence.contains(lat, lon)]

    def candidates(self, lat: float, lon: float) -> Sequence[Store]:
        return self._cells.get(h3.latlng_to_cell(lat, lon, RESOLUTION), _EMPTY)

    def nearby(self, lat: float, lon: float, radius_m: float, limit: int) -> list[tuple[Store, float]]:
        """Stores whose fence comes within `radius_m` of the point, nearest fence first."""
        if not self._stores:
            return []
        if self._centres is None:
            stores = list(self._stores.values())
            lats = np.array([s.fence.centre[0] for s in stores])
            lons = np.array([s.fence.centre[1] for s in stores])
            reach = np.array([s.fence.bounding_radius_m for s in stores])
            self._centres = (stores, lats, lons, reach)
        stores, lats, lons, reach = self._centres
        d = haversine_many_m(lat, lon, lats, lons) - reach
        near = np.flatnonzero(d <= radius_m)
        out = []
        for i in near:
            s = stores[i]
            dist = max(0.0, s.fence.distance_outside_m(lat, lon))
            if dist <= radius_m:
                out.append((s, dist))
        out.sort(key=lambda p: (p[1], p[0].store_id))
        return out[:limit]
