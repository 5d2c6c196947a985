"""The in-memory store index of one replica: H3 cell -> candidate stores, then an exact test.

A fix costs one `latlng_to_cell`, one dict lookup and an exact test per candidate, whatever
the number of stores; no Redis round trip. Mutations happen on the event loop between
requests (no awaits inside), so readers never see a half-applied change.

`nearby` reads only the buckets (stores by the cell of their fence's centre, at a fine and a
coarse resolution) of a grid disk around the point, bounds every candidate's distance from below in one numpy pass,
and runs the exact fence distance only nearest-bound first until `limit` answers are sure: its
cost follows the stores near the point and the limit, not the catalogue or the radius.
"""
from __future__ import annotations

import bisect
from typing import Callable, Iterable, Sequence

import h3.api.basic_int as h3
import numpy as np

from .fences import CircleFence, Fence
from .geodesy import haversine_many_m
from .h3_cells import BUCKET_RESOLUTIONS, RESOLUTION, bucket_cell, bucket_disk, bucket_disk_rings, cover
from .stores import Store

_EMPTY: tuple = ()
# A polygon's exact distance is measured on its own local plane, which over tens of kilometres
# differs from the sphere by a few per cent (up to ~14 % at 85 degrees of latitude and 75 km):
# its lower bound takes 80 % of the centre's spherical distance, minus its bounding radius.
_POLYGON_BOUND_FACTOR = 0.8
_TIE_SLACK_M = 1e-6  # numpy's and math's haversine may differ in the last bit


class StoreIndex:
    def __init__(self, stores: Iterable[Store] = ()) -> None:
        self._stores: dict[str, Store] = {}
        self._cells: dict[int, tuple[Store, ...]] = {}
        self._store_cells: dict[str, list[int]] = {}
        self._buckets = [_CentreBuckets(res) for res in BUCKET_RESOLUTIONS]  # for `nearby`
        self._max_reach_m = 0.0  # largest bounding radius seen (never lowered: a wider disk is only slower)
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
        for buckets in self._buckets:
            buckets.add(store)
        self._max_reach_m = max(self._max_reach_m, store.fence.bounding_radius_m)

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
        for buckets in self._buckets:
            buckets.remove(old)
        return True

    def containing(self, lat: float, lon: float) -> Sequence[Store]:
        candidates = self._cells.get(h3.latlng_to_cell(lat, lon, RESOLUTION))
        if not candidates:
            return _EMPTY
        return [s for s in candidates if s.fence.contains(lat, lon)]

    def candidates(self, lat: float, lon: float) -> Sequence[Store]:
        return self._cells.get(h3.latlng_to_cell(lat, lon, RESOLUTION), _EMPTY)

    def nearby(self, lat: float, lon: float, radius_m: float, limit: int, *,
               distance: Callable[[Fence, float, float], float] | None = None,
               accept: Callable[[Store], bool] | None = None) -> list[tuple[Store, float]]:
        """Stores whose fence comes within `radius_m` of the point, nearest fence first (ties by
        store id), at most `limit` of them. `distance`: the exact measure, the fence's own (clamped
        at 0) by default; any other must stay above the lower bound below, as the great-circle
        distance does (region sync measures on the sphere: its polygons' spherical reach exceeds
        their planar one by far less than the bound's 20 %). `accept`: only the stores it
        accepts are answered and counted."""
        if not self._stores or limit <= 0:
            return []
        reach = (radius_m + self._max_reach_m) / _POLYGON_BOUND_FACTOR
        # the finest resolution whose disk stays small (a few hundred cells)
        buckets = next((b for b in self._buckets if bucket_disk_rings(reach, b.resolution) <= _MAX_RINGS),
                       self._buckets[-1])
        parts = buckets.arrays_around(lat, lon, bucket_disk_rings(reach, buckets.resolution))
        if not parts:
            return []
        lats, lons, reaches, is_circle = (np.concatenate([p[i] for p in parts]) for i in (1, 2, 3, 4))
        ends = np.cumsum([len(p[0]) for p in parts])
        d = haversine_many_m(lat, lon, lats, lons)
        # exact for a circle (up to the last bit); a sure lower bound for a polygon
        bound = np.maximum(np.where(is_circle, d, d * _POLYGON_BOUND_FACTOR) - reaches, 0.0) - _TIE_SLACK_M
        near = np.flatnonzero(bound <= radius_m)
        found: list[tuple[float, str, Store]] = []  # the best so far, kept sorted (at most `limit`)
        # Candidates by lower bound, exact distance only until no later one can come nearer. The
        # few smallest bounds first (a partition, not a sort of thousands); the rest if needed.
        first = 4 * limit
        if len(near) > first:
            split = np.argpartition(bound[near], first)
            batches = [near[split[:first]], near[split[first:]]]
        else:
            batches = [near]
        for batch in batches:
            for i in batch[np.argsort(bound[batch], kind="stable")].tolist():
                if len(found) >= limit and bound[i] > found[-1][0]:
                    return [(s, dist) for dist, _, s in found]  # the rest lie farther still
                part = int(np.searchsorted(ends, i, side="right"))
                s = parts[part][0][i - (int(ends[part - 1]) if part else 0)]
                if accept is not None and not accept(s):
                    continue
                dist = (max(0.0, s.fence.distance_outside_m(lat, lon)) if distance is None
                        else distance(s.fence, lat, lon))
                if dist <= radius_m:
                    bisect.insort(found, (dist, s.store_id, s), key=_by_distance_then_id)
                    del found[limit:]
        return [(s, dist) for dist, _, s in found]


_MAX_RINGS = 12  # 469 cells


class _CentreBuckets:
    """Stores by the cell (at one resolution) of their fence's centre, with numpy arrays of each
    bucket's centres and reaches built on first use and dropped when the bucket changes."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self._members: dict[int, dict[str, Store]] = {}
        self._arrays: dict[int, tuple] = {}

    def add(self, store: Store) -> None:
        cell = bucket_cell(*store.fence.centre, self.resolution)
        self._members.setdefault(cell, {})[store.store_id] = store
        self._arrays.pop(cell, None)

    def remove(self, store: Store) -> None:
        cell = bucket_cell(*store.fence.centre, self.resolution)
        members = self._members.get(cell)
        if members is not None:
            members.pop(store.store_id, None)
            if not members:
                del self._members[cell]
        self._arrays.pop(cell, None)

    def arrays_around(self, lat: float, lon: float, rings: int) -> list[tuple]:
        members = self._members
        return [self._bucket(c) for c in bucket_disk(lat, lon, rings, self.resolution) if c in members]

    def _bucket(self, cell: int) -> tuple:
        arrays = self._arrays.get(cell)
        if arrays is None:
            stores = list(self._members[cell].values())
            arrays = (stores,
                      np.array([s.fence.centre[0] for s in stores]),
                      np.array([s.fence.centre[1] for s in stores]),
                      np.array([s.fence.bounding_radius_m for s in stores]),
                      np.array([isinstance(s.fence, CircleFence) for s in stores], dtype=bool))
            self._arrays[cell] = arrays
        return arrays


def _by_distance_then_id(entry: tuple[float, str, Store]) -> tuple[float, str]:
    return entry[0], entry[1]
