"""Region sync (pure): the stores nearest a phone as circles that each enclose a whole fence, and
the circle around the phone within which that answer stays complete.

The phone registers the circles with the OS's region monitoring (iOS keeps 20 regions, Android
100) and sleeps; when it leaves the resync circle it asks again. Two promises, on the sphere of
`geodesy`, with slack for the phone's own measure (WGS84: a distance on the ellipsoid and on the
sphere differ by less than 0.6 %) and for the rounding of the answer:
- every region circle encloses its whole fence;
- no part of a fence left out lies in the resync circle (nor touches it), so the phone cannot
  reach a store it was not told about without leaving the circle first. The stores are the
  nearest by distance to the fence (0 inside), so no store nearer than the farthest returned one
  is left out.

Distances from the phone to polygons are measured on the azimuthal equidistant projection
centred on the phone, where every distance from the centre is the great-circle one at any range
(a fence's own local plane drifts by about 1 % at tens of kilometres). A polygon's edges are
straight in lon/lat, as the fence defines them: they are cut into pieces of at most
`EDGE_STEP_M` first, so that the chords on the projection stay within millimetres of them.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import shapely

from .fences import CircleFence, Fence, PolygonFence
from .geodesy import equidistant_xy, haversine_m, haversine_many_m
from .store_index import StoreIndex
from .stores import Store

# the phone's measure (WGS84) vs the sphere: within 0.56 % for any distance a fence spans
ELLIPSOID_SLACK = 0.006
MARGIN_M = 1.0             # on top: rounding (centres to 1e-7 degree, ~1 cm) and float error
EDGE_STEP_M = 250.0        # a lon/lat edge of 250 m strays < 2 mm from its chord on either plane
MAX_RESYNC_RADIUS_M = 20_000.0  # with few stores around: ask again after 20 km at most
# Stores beyond this distance never matter: even the largest resync circle keeps clear of them.
SEARCH_RADIUS_M = MAX_RESYNC_RADIUS_M * (1 + ELLIPSOID_SLACK) + MARGIN_M + 1.0
COORD_DECIMALS = 7


@dataclass(frozen=True, slots=True)
class Circle:
    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True, slots=True)
class Region:
    store: Store
    circle: Circle       # encloses the whole fence
    distance_m: float    # from the phone to the fence (0 inside), on the sphere


@dataclass(frozen=True, slots=True)
class RegionPlan:
    regions: list[Region]  # nearest fence first (ties by store id)
    resync_radius_m: float  # centred on the phone; never reaches a fence left out


def plan_regions(index: StoreIndex, outlines: "FenceOutlines", lat: float, lon: float, limit: int) -> RegionPlan:
    """The `limit` enabled stores nearest (lat, lon) and the resync radius. A disabled store starts
    no visit, so it takes no region (it is neither returned nor counted as left out)."""
    found = index.nearby(lat, lon, SEARCH_RADIUS_M, limit + 1, distance=outlines.distance_m,
                         accept=_enabled)
    chosen, left_out = found[:limit], found[limit:]
    resync = MAX_RESYNC_RADIUS_M  # every store left out lies beyond SEARCH_RADIUS_M
    if left_out:
        resync = min(resync, resync_radius_for(left_out[0][1]))
    return RegionPlan([Region(s, outlines.enclosing(s.fence), d) for s, d in chosen], resync)


def resync_radius_for(nearest_left_out_m: float) -> float:
    """The largest radius, rounded down to the centimetre, whose circle measured by the phone keeps
    clear of a fence this far away; 0 when that fence contains or nearly touches the point (ask
    again on any move)."""
    r = (nearest_left_out_m - MARGIN_M) / (1 + ELLIPSOID_SLACK)
    return max(0.0, math.floor(r * 100) / 100)


def _enabled(store: Store) -> bool:
    return store.enabled


def _round_up_cm(x: float) -> float:
    return math.ceil(x * 100) / 100


def _enclosing_circle(lat: float, lon: float, radius_m: float) -> Circle:
    """A circle around (lat, lon) of `radius_m` on the sphere, widened for the phone's measure and
    rounded (the centre's rounding moves it by ~1 cm, within the margin)."""
    return Circle(round(lat, COORD_DECIMALS), round(lon, COORD_DECIMALS),
                  _round_up_cm(radius_m * (1 + ELLIPSOID_SLACK) + MARGIN_M))


@dataclass(frozen=True, slots=True)
class PolygonOutline:
    """A polygon fence's boundary (every ring, holes included) with its edges cut to `EDGE_STEP_M`:
    the rings' vertices one after the other in lat/lon, `edge[i]` true where vertex i and i + 1
    are the two ends of an edge (false where a ring ends); and the circle that encloses it."""
    lats: np.ndarray
    lons: np.ndarray
    edge: np.ndarray
    enclosing: Circle


def polygon_outline(fence: PolygonFence) -> PolygonOutline:
    dense = shapely.segmentize(fence.shape, EDGE_STEP_M)
    rings = [shapely.get_coordinates(r) for r in shapely.get_rings(shapely.get_parts(dense))]
    xy = np.concatenate(rings)
    edge = np.ones(len(xy) - 1, dtype=bool)
    edge[np.cumsum([len(r) for r in rings])[:-1] - 1] = False  # from a ring's last vertex to the next ring's first
    lats, lons = fence.plane.latlon_many(xy[:, 0], xy[:, 1])
    # The smallest circle on the fence's plane is a good centre; the radius is measured on the
    # sphere to every vertex of the cut boundary (a cap is convex: the chords between them inside
    # it stay inside it, and the edges stray from their chords by millimetres).
    centre = shapely.centroid(shapely.minimum_bounding_circle(dense))
    clat, clon = fence.plane.latlon(float(centre.x), float(centre.y))
    radius = float(np.max(haversine_many_m(clat, clon, lats, lons)))
    return PolygonOutline(lats, lons, edge, _enclosing_circle(clat, clon, radius))


def polygon_distance_m(outline: PolygonOutline, lat: float, lon: float) -> float:
    """Great-circle metres from a point outside the polygon to its boundary."""
    x, y = equidistant_xy(lat, lon, outline.lats, outline.lons)
    xa, ya, xb, yb = x[:-1][outline.edge], y[:-1][outline.edge], x[1:][outline.edge], y[1:][outline.edge]
    dx, dy = xb - xa, yb - ya
    seg2 = dx * dx + dy * dy
    t = np.clip(-(xa * dx + ya * dy) / np.where(seg2 > 0, seg2, 1.0), 0.0, 1.0)
    return float(np.min(np.hypot(xa + t * dx, ya + t * dy)))


class FenceOutlines:
    """Each polygon fence's outline, made on first use and kept for the most recently used
    `capacity` fences (a replaced store's fence is a new object: its old entry simply ages out)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, tuple[PolygonFence, PolygonOutline]] = OrderedDict()

    def outline(self, fence: PolygonFence) -> PolygonOutline:
        key = id(fence)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is fence:
            self._entries.move_to_end(key)
            return entry[1]
        made = polygon_outline(fence)
        self._entries[key] = (fence, made)  # holding the fence keeps its id from being reused
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return made

    def enclosing(self, fence: Fence) -> Circle:
        if isinstance(fence, CircleFence):
            return _enclosing_circle(fence.lat, fence.lon, fence.radius_m)
        return self.outline(fence).enclosing

    def distance_m(self, fence: Fence, lat: float, lon: float) -> float:
        """Great-circle metres from the point to the fence, 0 inside."""
        if isinstance(fence, CircleFence):
            return max(0.0, haversine_m(fence.lat, fence.lon, lat, lon) - fence.radius_m)
        if fence.contains(lat, lon):
            return 0.0
        return polygon_distance_m(self.outline(fence), lat, lon)
