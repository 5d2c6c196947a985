"""StoreIndex.containing must give exactly the brute-force answer, whatever the fence and the point.

Two oracles: the fences' own `contains` over every store (the index may only speed that up, never
change it), and, independently of the fence code, a spherical distance for circles and shapely on
the lon/lat geometry for polygons (the fences promise planar lon/lat semantics for polygons).

Points are drawn where a covering is most likely to be wrong: within a few metres of fence edges,
and just inside the edges/vertices of H3 cells that run along a fence boundary (a fence that
reaches into a cell by a sliver is the case a sloppy covering drops).
"""
from __future__ import annotations

import csv
import json
import math
import random
import zlib
from pathlib import Path

import h3.api.basic_int as h3
import numpy as np
import pytest
import shapely
from shapely.geometry import shape as geojson_shape

from vicino.services.geo.domain.fences import CircleFence
from vicino.services.geo.domain.geojson_codec import store_from_feature
from vicino.services.geo.domain.h3_cells import RESOLUTION, cover
from vicino.services.geo.domain.store_index import StoreIndex
from vicino.services.geo.domain.stores import Store

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "services" / "launcher" / "demo_data"
R = 6_371_008.8  # the service's sphere; the oracles below use their own formulae on it
M_PER_DEG = R * math.pi / 180.0
EDGE_M = h3.average_hexagon_edge_length(RESOLUTION, "m")


# ---------------------------------------------------------------------------------------------
# independent geometry helpers


def sphere_dist_m(lat1, lon1, lat2, lon2):
    """Great-circle distance by the atan2 (Vincenty, spherical) form: well conditioned everywhere,
    and a different formula from the service's haversine."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2) - lon1)
    num = np.hypot(np.cos(p2) * np.sin(dl), np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl))
    den = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return R * np.arctan2(num, den)


def destination(lat, lon, bearing_rad, dist_m):
    """Point `dist_m` from (lat, lon) along the initial bearing, on the sphere; lon in [-180, 180)."""
    p1, l1 = math.radians(lat), math.radians(lon)
    b = np.asarray(bearing_rad, dtype=float)
    d = np.asarray(dist_m, dtype=float) / R
    p2 = np.arcsin(np.sin(p1) * np.cos(d) + np.cos(p1) * np.sin(d) * np.cos(b))
    l2 = l1 + np.arctan2(np.sin(b) * np.sin(d) * np.cos(p1), np.cos(d) - np.sin(p1) * np.sin(p2))
    return np.degrees(p2), (np.degrees(l2) + 180.0) % 360.0 - 180.0


def offset_deg(lat, dx_m, dy_m):
    """Small east/north offsets in metres as (dlat, dlon) degrees."""
    return dy_m / M_PER_DEG, dx_m / (M_PER_DEG * math.cos(math.radians(lat)))


def circle_feature(sid, lat, lon, radius_m, **props):
    return {"type": "Feature", "id": sid, "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"radius_m": radius_m, **props}}


def polygon_feature(sid, rings, gtype="Polygon", **props):
    return {"type": "Feature", "id": sid, "geometry": {"type": gtype, "coordinates": rings},
            "properties": dict(props)}


def make_store(feature) -> Store:
    store, _ = store_from_feature(feature)
    return store


def rect_ring(lat, lon, half_w_m, half_h_m):
    dlat, dlon = offset_deg(lat, half_w_m, half_h_m)
    return [[lon - dlon, lat - dlat], [lon + dlon, lat - dlat], [lon + dlon, lat + dlat],
            [lon - dlon, lat + dlat], [lon - dlon, lat - dlat]]


def regular_ring(lat, lon, radius_m, n):
    lats, lons = destination(lat, lon, np.linspace(0, 2 * math.pi, n, endpoint=False), radius_m)
    ring = [[float(a), float(b)] for a, b in zip(lons, lats)]
    return ring + [ring[0]]


# ---------------------------------------------------------------------------------------------
# oracles and comparison


class BruteForce:
    """`[s for s in stores if s.fence.contains(lat, lon)]`, with coarse 0.02-degree buckets in
    front so thousands of stores times tens of thousands of points stays fast: a store is put in
    every bucket that its fence's box, grown by 1 km, overlaps, so a bucket cannot lack a store
    that contains one of its points."""

    STEP = 0.02

    def __init__(self, stores):
        self.stores = list(stores)
        self.buckets: dict[tuple[int, int], list[Store]] = {}
        for s in self.stores:
            lat, lon = s.fence.centre
            reach = (s.fence.bounding_radius_m + 1000.0) / M_PER_DEG
            rlon = reach / max(math.cos(math.radians(min(abs(lat) + reach, 89.0))), 1e-3)
            for i in range(math.floor((lat - reach) / self.STEP), math.floor((lat + reach) / self.STEP) + 1):
                for j in range(math.floor((lon - rlon) / self.STEP), math.floor((lon + rlon) / self.STEP) + 1):
                    jj = j % round(360 / self.STEP)  # the antimeridian: buckets wrap
                    self.buckets.setdefault((i, jj), []).append(s)

    def containing(self, lat, lon):
        key = (math.floor(lat / self.STEP), math.floor(lon / self.STEP) % round(360 / self.STEP))
        return [s for s in self.buckets.get(key, ()) if s.fence.contains(lat, lon)]


def assert_index_matches(index: StoreIndex, brute: BruteForce, lats, lons) -> int:
    """Identical answers at every point; returns how many (point, store) memberships were seen."""
    hits = 0
    bad = []
    for la, lo in zip(np.asarray(lats, dtype=float).tolist(), np.asarray(lons, dtype=float).tolist()):
        want = sorted(s.store_id for s in brute.containing(la, lo))
        got = sorted(s.store_id for s in index.containing(la, lo))
        if got != want:
            bad.append((la, lo, want, got))
        hits += len(want)
    assert not bad, f"{len(bad)} points disagree with brute force, e.g. {bad[:5]}"
    return hits


def circle_oracle_agrees(fence: CircleFence, lats, lons, min_margin_m=1e-3):
    """The fence's haversine test against an independent great-circle formula; points within a
    millimetre of the edge are left out (two float formulae may honestly differ there)."""
    lats = np.asarray(lats, dtype=float)
    lons = np.asarray(lons, dtype=float)
    margin = sphere_dist_m(fence.lat, fence.lon, lats, lons) - fence.radius_m
    clear = np.abs(margin) >= min_margin_m
    want = margin[clear] <= 0
    got = np.array([fence.contains(a, b) for a, b in zip(lats[clear], lons[clear])])
    assert (got == want).all(), list(zip(lats[clear][got != want], lons[clear][got != want]))[:5]
    assert clear.mean() > 0.99
    return int(want.sum()), int((~want).sum())


def polygon_oracle_agrees(store: Store, lats, lons, unwrap=False, min_margin_deg=1e-10):
    """The fence against shapely on the feature's own lon/lat geometry (intersects: the boundary
    is inside). `unwrap` moves negative longitudes by +360 for fences across the antimeridian."""
    geom = geojson_shape(store.feature["geometry"])
    lats = np.asarray(lats, dtype=float)
    lons = np.asarray(lons, dtype=float)
    xs = lons.copy()
    if unwrap:
        geom = shapely.transform(geom, lambda c: np.column_stack([np.where(c[:, 0] < 0, c[:, 0] + 360, c[:, 0]), c[:, 1]]))
        xs = np.where(xs < 0, xs + 360.0, xs)
    shapely.prepare(geom)
    pts = shapely.points(xs, lats)
    on_edge = shapely.distance(geom.boundary, pts) < min_margin_deg
    want = shapely.intersects(geom, pts)
    got = np.array([store.fence.contains(a, b) for a, b in zip(lats, lons)])
    agree = (got == want) | on_edge
    assert agree.all(), list(zip(lats[~agree], lons[~agree]))[:5]
    return int(want.sum()), int((~want).sum())


def cell_edge_probe(fence, rng, per_edge=12, band_m=None):
    """Points just inside the edges and vertices of every H3 cell that lies along the fence boundary.

    A cell is probed when its centre is within `band_m` of the fence edge (measured independently:
    great-circle for circles, shapely on the local plane for polygons). Each edge gets `per_edge`
    random points plus its vertex, nudged 0.1 %, 1 % and 3 % of the way to the cell centre
    (~0.2, 2 and 6 m); only points that H3 really puts in that cell are kept."""
    band_m = band_m if band_m is not None else 1.4 * EDGE_M
    lat0, lon0 = fence.centre
    origin = h3.latlng_to_cell(lat0, lon0, RESOLUTION)
    k = int(math.ceil((fence.bounding_radius_m + 2 * band_m) / (1.5 * EDGE_M))) + 2
    cells = h3.grid_disk(origin, k)
    centres = np.array([h3.cell_to_latlng(c) for c in cells])
    if isinstance(fence, CircleFence):
        edge_dist = np.abs(sphere_dist_m(fence.lat, fence.lon, centres[:, 0], centres[:, 1]) - fence.radius_m)
    else:
        xs, ys = fence.plane.xy_many(centres[:, 0], centres[:, 1])
        edge_dist = shapely.distance(fence.shape.boundary, shapely.points(xs, ys))
    lats, lons = [], []
    for c, d, (clat, clon) in zip(cells, edge_dist, centres):
        if d > band_m:
            continue
        b = np.array(h3.cell_to_boundary(c))
        nb = np.roll(b, -1, axis=0)
        dlon = (nb[:, 1] - b[:, 1] + 180.0) % 360.0 - 180.0
        t = np.concatenate([np.zeros((len(b), 1)), rng.random((len(b), per_edge))], axis=1)
        plat = (b[:, 0, None] + (nb[:, 0] - b[:, 0])[:, None] * t).ravel()
        plon = (b[:, 1, None] + dlon[:, None] * t).ravel()
        to_c_lat = clat - plat
        to_c_lon = (clon - plon + 180.0) % 360.0 - 180.0
        for f in (0.001, 0.01, 0.03):
            qlat = plat + to_c_lat * f
            qlon = (plon + to_c_lon * f + 180.0) % 360.0 - 180.0
            for a, o in zip(qlat.tolist(), qlon.tolist()):
                if h3.latlng_to_cell(a, o, RESOLUTION) == c:
                    lats.append(a)
                    lons.append(o)
    return np.array(lats), np.array(lons)


def circle_edge_points(fence: CircleFence, rng, n, max_off_m=3.0):
    """Points within `max_off_m` of the circle, both sides, at least 1 cm off it."""
    off = rng.uniform(0.01, max_off_m, n) * rng.choice([-1.0, 1.0], n)
    return destination(fence.lat, fence.lon, rng.uniform(0, 2 * math.pi, n), np.maximum(fence.radius_m + off, 0.0))


def ring_edge_points(ring, rng, n, max_off_m=3.0):
    """Points on random segments of a lon/lat ring, moved up to `max_off_m` in a random direction."""
    ring = np.asarray(ring, dtype=float)
    a, b = ring[:-1], ring[1:]
    i = rng.integers(0, len(a), n)
    t = rng.random(n)
    dlon = (b[i, 0] - a[i, 0] + 180.0) % 360.0 - 180.0
    lon = a[i, 0] + dlon * t
    lat = a[i, 1] + (b[i, 1] - a[i, 1]) * t
    r = rng.uniform(0.0, max_off_m, n)
    th = rng.uniform(0, 2 * math.pi, n)
    dlat = r * np.sin(th) / M_PER_DEG
    dl = r * np.cos(th) / (M_PER_DEG * np.cos(np.radians(lat)))
    return lat + dlat, (lon + dl + 180.0) % 360.0 - 180.0


# ---------------------------------------------------------------------------------------------
# real demo stores


def fuel_rows():
    with open(DEMO / "fuel_stations_mi_rm.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def fuel_stores(radii):
    rows = fuel_rows()
    return [make_store(circle_feature(r["store_id"], float(r["lat"]), float(r["lon"]), float(rad), name=r["name"]))
            for r, rad in zip(rows, radii)]


@pytest.fixture(scope="module")
def fuel_80():
    stores = fuel_stores([80.0] * len(fuel_rows()))
    return stores, StoreIndex(stores)


@pytest.fixture(scope="module")
def fuel_mixed():
    rng = np.random.default_rng(20240611)
    radii = np.exp(rng.uniform(math.log(10), math.log(2000), len(fuel_rows())))
    radii[:20] = 10.0  # the extremes, for sure
    radii[20:40] = 2000.0
    stores = fuel_stores(radii)
    return stores, StoreIndex(stores)


@pytest.fixture(scope="module")
def nil():
    data = json.loads((DEMO / "milano_nil.geojson").read_text(encoding="utf-8"))
    stores = []
    for f in data["features"]:
        store, warnings = store_from_feature(f)
        stores.append(store)
    return data, stores, StoreIndex(stores)


def test_demo_fuel_stations_load_all():
    rows = fuel_rows()
    assert len(rows) == 2293
    assert len({r["store_id"] for r in rows}) == 2293


@pytest.mark.parametrize("which", ["fuel_80", "fuel_mixed"])
def test_fuel_stations_index_equals_brute_force(which, request):
    stores, index = request.getfixturevalue(which)
    assert len(index) == 2293
    brute = BruteForce(stores)
    rng = np.random.default_rng(7 if which == "fuel_80" else 8)
    lats, lons = [], []
    for s in stores:  # 6 near the edge (±3 m), 3 anywhere out to 1.5 radii: ~20,000 points
        f = s.fence
        a, b = circle_edge_points(f, rng, 6)
        lats.append(a)
        lons.append(b)
        a, b = destination(f.lat, f.lon, rng.uniform(0, 2 * math.pi, 3), f.radius_m * 1.5 * np.sqrt(rng.random(3)))
        lats.append(a)
        lons.append(b)
    # and a scatter over both metro areas
    for lat0, lon0 in ((45.46, 9.19), (41.90, 12.50)):
        lats.append(rng.uniform(lat0 - 0.3, lat0 + 0.3, 3000))
        lons.append(rng.uniform(lon0 - 0.4, lon0 + 0.4, 3000))
    lats = np.concatenate(lats)
    lons = np.concatenate(lons)
    assert len(lats) > 25_000
    hits = assert_index_matches(index, brute, lats, lons)
    assert hits > 8_000  # the sample really lands inside fences, not only around them

    # independently of the fence code: great-circle distance to every centre, vectorised
    cl = np.array([s.fence.lat for s in stores])
    co = np.array([s.fence.lon for s in stores])
    rad = np.array([s.fence.radius_m for s in stores])
    ids = np.array([s.store_id for s in stores])
    checked = 0
    for la, lo in zip(lats[::4].tolist(), lons[::4].tolist()):
        margin = sphere_dist_m(la, lo, cl, co) - rad
        if np.any(np.abs(margin) < 1e-3):
            continue
        want = sorted(ids[margin <= 0].tolist())
        assert sorted(s.store_id for s in index.containing(la, lo)) == want, (la, lo)
        checked += 1
    assert checked > 0.99 * len(lats[::4])


@pytest.mark.parametrize("which", ["fuel_80", "fuel_mixed"])
def test_fuel_stations_cell_edges(which, request):
    """Just inside H3 cell edges along a sample of the fences' boundaries."""
    stores, index = request.getfixturevalue(which)
    brute = BruteForce(stores)
    rng = np.random.default_rng(11)
    picked = [stores[i] for i in rng.choice(len(stores), 40, replace=False)]
    if which == "fuel_mixed":
        picked += stores[:4] + stores[20:24]  # 10 m and 2000 m fences
    for s in picked:
        lats, lons = cell_edge_probe(s.fence, rng, per_edge=3)
        assert len(lats) > 0
        assert_index_matches(index, brute, lats, lons)


def test_milano_nil_polygons_equal_brute_force_and_shapely(nil):
    data, stores, index = nil
    assert len(stores) == 88
    assert all(s.fence.kind == "polygon" for s in stores)
    brute = BruteForce(stores)
    rng = np.random.default_rng(3)
    lats, lons = [], []
    for f in data["features"]:
        ring = f["geometry"]["coordinates"][0]
        a, b = ring_edge_points(ring, rng, 160)  # within 3 m of the district edges
        lats.append(a)
        lons.append(b)
        verts = np.asarray(ring[:-1])[rng.choice(len(ring) - 1, min(20, len(ring) - 1), replace=False)]
        lats.append(verts[:, 1])  # exactly on a vertex: on the boundary, which counts as inside
        lons.append(verts[:, 0])
    lats.append(rng.uniform(45.38, 45.54, 6000))
    lons.append(rng.uniform(9.03, 9.29, 6000))
    lats = np.concatenate(lats)
    lons = np.concatenate(lons)
    assert len(lats) > 20_000
    hits = assert_index_matches(index, brute, lats, lons)
    assert hits > 10_000
    # independent oracle, store by store, on the points near that store
    inside_total = 0
    for s in stores:
        lat0, lon0 = s.fence.centre
        reach = (s.fence.bounding_radius_m + 50) / M_PER_DEG
        sel = (np.abs(lats - lat0) < reach) & (np.abs(lons - lon0) < reach / math.cos(math.radians(lat0)))
        inside, _ = polygon_oracle_agrees(s, lats[sel], lons[sel])
        inside_total += inside
    assert inside_total > 5_000


def test_milano_nil_cell_edges(nil):
    _, stores, index = nil
    brute = BruteForce(stores)
    rng = np.random.default_rng(5)
    for s in stores[::4]:
        lats, lons = cell_edge_probe(s.fence, rng, per_edge=3, band_m=1.2 * EDGE_M)
        assert_index_matches(index, brute, lats, lons)


# ---------------------------------------------------------------------------------------------
# holes and multipolygons


def test_polygon_with_hole():
    lat, lon = 45.47, 9.18
    store = make_store(polygon_feature("donut", [rect_ring(lat, lon, 200, 200), rect_ring(lat, lon, 50, 50)[::-1]]))
    index = StoreIndex([store])
    found = lambda la, lo: [s.store_id for s in index.containing(la, lo)]  # noqa: E731
    rng = np.random.default_rng(1)
    # in the hole: outside
    for dx, dy in rng.uniform(-49, 49, (300, 2)):
        dlat, dlon = offset_deg(lat, dx, dy)
        assert found(lat + dlat, lon + dlon) == []
    # in the ring: inside
    n = 0
    for dx, dy in rng.uniform(-199, 199, (2000, 2)):
        if max(abs(dx), abs(dy)) <= 51:
            continue
        dlat, dlon = offset_deg(lat, dx, dy)
        assert found(lat + dlat, lon + dlon) == ["donut"]
        n += 1
    assert n > 1000
    # outside the outer ring
    for dx, dy in [(201, 0), (0, -201), (-250, 250), (300, 10)]:
        dlat, dlon = offset_deg(lat, dx, dy)
        assert found(lat + dlat, lon + dlon) == []
    brute = BruteForce([store])
    a, b = ring_edge_points(rect_ring(lat, lon, 50, 50), rng, 3000, max_off_m=2.0)  # around the hole's edge
    assert_index_matches(index, brute, a, b)
    inside, outside = polygon_oracle_agrees(store, a, b)
    assert inside > 500 and outside > 500
    la, lo = cell_edge_probe(store.fence, rng)
    assert_index_matches(index, brute, la, lo)


def test_multipolygon_parts_and_the_gap_between():
    lat, lon = 41.89, 12.49
    d1lat, d1lon = offset_deg(lat, 1000, 0)
    west = rect_ring(lat, lon, 60, 40)
    east = rect_ring(lat + d1lat, lon + d1lon, 30, 90)
    store = make_store(polygon_feature("two", [[west], [east]], gtype="MultiPolygon"))
    index = StoreIndex([store])
    assert [s.store_id for s in index.containing(lat, lon)] == ["two"]
    assert [s.store_id for s in index.containing(lat + d1lat, lon + d1lon)] == ["two"]
    for frac in (0.2, 0.5, 0.8):  # between the parts
        assert list(index.containing(lat, lon + d1lon * frac)) == []
    rng = np.random.default_rng(2)
    brute = BruteForce([store])
    pts = [ring_edge_points(west, rng, 1500), ring_edge_points(east, rng, 1500), cell_edge_probe(store.fence, rng)]
    la = np.concatenate([p[0] for p in pts])
    lo = np.concatenate([p[1] for p in pts])
    assert_index_matches(index, brute, la, lo)
    inside, outside = polygon_oracle_agrees(store, la[:3000], lo[:3000])
    assert inside > 500 and outside > 500


# ---------------------------------------------------------------------------------------------
# tiny fences straddling H3 cell edges and vertices


def _tiny_sites():
    """Vertices and edge midpoints of real res-9 cells in Milan and Rome."""
    sites = []
    for lat, lon in ((45.4642, 9.1900), (41.9028, 12.4964)):
        cell = h3.latlng_to_cell(lat, lon, RESOLUTION)
        b = h3.cell_to_boundary(cell)
        for i in range(len(b)):
            sites.append(("vertex", b[i]))
            j = (i + 1) % len(b)
            sites.append(("edge", ((b[i][0] + b[j][0]) / 2, (b[i][1] + b[j][1]) / 2)))
    return sites


@pytest.mark.parametrize("kind,site", _tiny_sites())
def test_tiny_fences_across_cell_boundaries(kind, site):
    lat, lon = site
    circle = make_store(circle_feature("c10", lat, lon, 10))
    square = make_store(polygon_feature("sq5", [rect_ring(lat, lon, 2.5, 2.5)]))
    assert circle.fence.radius_m < EDGE_M / 10
    for store, pts in (
        (circle, [destination(lat, lon, b, d) for b in np.linspace(0, 2 * math.pi, 72, endpoint=False)
                  for d in (0.0, 3.0, 6.0, 9.0, 9.9, 9.99)]),
        (square, [(lat + offset_deg(lat, dx, dy)[0], lon + offset_deg(lat, dx, dy)[1])
                  for dx in np.linspace(-2.49, 2.49, 15) for dy in np.linspace(-2.49, 2.49, 15)]),
    ):
        index = StoreIndex([store])
        cells = set()
        for la, lo in pts:
            la, lo = float(la), float(lo)
            assert store.fence.contains(la, lo)
            assert [s.store_id for s in index.containing(la, lo)] == [store.store_id], (store.store_id, la, lo)
            cells.add(h3.latlng_to_cell(la, lo, RESOLUTION))
        # the fence really straddles: 3 cells meet at a vertex, 2 at an edge
        assert len(cells) == (3 if kind == "vertex" else 2), cells
        assert set(cover(store.fence)) >= cells
        # just outside finds nothing
        for b in np.linspace(0, 2 * math.pi, 36, endpoint=False):
            la, lo = destination(lat, lon, b, 10.5 if store is circle else 3.6)
            assert list(index.containing(float(la), float(lo))) == []


# ---------------------------------------------------------------------------------------------
# huge fences, the antimeridian, high latitudes: edge points, cell-edge probes, plausible covers


def _big_cases():
    rng = np.random.default_rng(99)
    cases = [
        ("circle 10 km Milano", circle_feature("big", 45.4642, 9.19, 10_000)),
        ("circle 10 km 70N", circle_feature("big", 70.0, 20.0, 10_000)),
        ("circle 5 km 70N", circle_feature("big", 70.0, 20.0, 5_000)),
        ("circle 1 km 70N", circle_feature("big", 70.0, -150.0, 1_000)),
        ("circle 10 km 80N", circle_feature("big", 80.0, 15.0, 10_000)),
        ("circle 5 km lon 179.999", circle_feature("am", 0.5, 179.999, 5_000)),
        ("circle 1 km lon -179.999", circle_feature("am", -16.5, -179.999, 1_000)),
        ("circle 3 km lon 179.999 65N", circle_feature("am", 65.0, 179.999, 3_000)),
        ("circle 5 km lon -179.999 70N", circle_feature("am", 70.0, -179.999, 5_000)),
        ("polygon 40 km wide Milano", polygon_feature("wide", [regular_ring(45.4642, 9.19, 20_000, 96)])),
        ("polygon 40x16 km 70N", polygon_feature("wide", [rect_ring(70.0, 20.0, 20_000, 8_000)])),
        ("polygon ring across 180", polygon_feature(
            "am", [[[179.99, -16.0], [-179.99, -16.0], [-179.99, -15.99], [179.99, -15.99], [179.99, -16.0]]])),
        ("multipolygon split at 180", polygon_feature("am", [
            [[[179.97, 65.0], [180.0, 65.0], [180.0, 65.02], [179.97, 65.02], [179.97, 65.0]]],
            [[[-180.0, 65.0], [-179.97, 65.0], [-179.97, 65.02], [-180.0, 65.02], [-180.0, 65.0]]]],
            gtype="MultiPolygon")),
    ]
    # found missing a cell before the fix (a sliver < 1 m deep at a mid latitude)
    cases.append(("circle 10 km 45N -10.113", circle_feature("big", 45.184, -10.113, 10_000)))
    for i in range(10):  # 10 km circles at random places
        cases.append((f"circle 10 km random {i}", circle_feature(
            "big", float(rng.uniform(-75, 75)), float(rng.uniform(-180, 180)), 10_000)))
    return cases


BIG = _big_cases()


@pytest.mark.parametrize("name,feature", BIG, ids=[c[0] for c in BIG])
def test_big_antimeridian_and_polar_fences(name, feature):
    store = make_store(feature)
    index = StoreIndex([store])
    brute = BruteForce([store])
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    f = store.fence
    if isinstance(f, CircleFence):
        a, b = circle_edge_points(f, rng, 4000, max_off_m=5.0)
        inside, outside = circle_oracle_agrees(f, a, b)
    else:
        rings = feature["geometry"]["coordinates"]
        rings = [rings[0]] if feature["geometry"]["type"] == "Polygon" else [p[0] for p in rings]
        pts = [ring_edge_points(r, rng, 4000 // len(rings), max_off_m=5.0) for r in rings]
        a = np.concatenate([p[0] for p in pts])
        b = np.concatenate([p[1] for p in pts])
        inside, outside = polygon_oracle_agrees(store, a, b, unwrap="180" in name)
    assert inside > 1000 and outside > 1000
    assert_index_matches(index, brute, a, b)
    # the far side of the fence from the cell of its centre is found as well as the near side
    assert len({h3.latlng_to_cell(float(x), float(y), RESOLUTION) for x, y in zip(a, b)}) > 5
    # every cell along the boundary, probed just inside its edges
    la, lo = cell_edge_probe(f, rng, per_edge=6)
    assert len(la) > 100
    assert_index_matches(index, brute, la, lo)
    # far away: nothing (the mirrored longitude, the other hemisphere, a degree off)
    lat0, lon0 = f.centre
    far = [(lat0 + 1.0, lon0), (lat0 - 1.0, lon0), (lat0, (lon0 + 181.0) % 360 - 180),
           (lat0, (lon0 + 179.0) % 360 - 180), (lat0, (lon0 + 360.0) % 360 - 180)]
    if abs(lat0) > 0.2:
        far.append((-lat0, lon0))
    for la, lo in far:
        assert list(index.containing(la, lo)) == [], (la, lo)


@pytest.mark.parametrize("name,feature", [c for c in BIG if "180" in c[0] or "179.999" in c[0]],
                         ids=[c[0] for c in BIG if "180" in c[0] or "179.999" in c[0]])
def test_antimeridian_fences_found_on_both_sides(name, feature):
    store = make_store(feature)
    index = StoreIndex([store])
    lat0, lon0 = store.fence.centre
    east = west = 0
    # points across the line, up to a few hundred metres either side of it, inside the fence
    for dx in (-400.0, -150.0, -20.0, -1.0, 1.0, 20.0, 150.0, 400.0):
        for dy in (-300.0, 0.0, 300.0):
            dlat, dlon = offset_deg(lat0, dx, dy)
            lat, lon = lat0 + dlat, (lon0 + dlon + 180.0) % 360.0 - 180.0
            assert store.fence.contains(lat, lon), (lat, lon)
            assert [s.store_id for s in index.containing(lat, lon)] == ["am"], (lat, lon)
            if lon > 0:
                east += 1
            else:
                west += 1
    assert east > 0 and west > 0


@pytest.mark.parametrize("radius_m,lat", [(10_000, 45.4642), (10_000, 70.0), (2_000, 41.9)])
def test_cover_cell_count_is_plausible_for_circles(radius_m, lat):
    f = make_store(circle_feature("c", lat, 9.19, radius_m)).fence
    cells = cover(f)
    assert len(cells) == len(set(cells))
    # the cells (disjoint) must hold the disk, and need not reach much beyond one cell width out
    # (cell sizes vary with latitude: use the real areas of these cells, not the global average)
    covered = sum(h3.cell_area(c, "km^2") for c in cells)
    assert covered >= math.pi * (radius_m / 1000) ** 2
    assert covered <= math.pi * ((radius_m + 2 * 1.3 * EDGE_M) / 1000) ** 2
    # every centre of a kept cell is within a cell's reach of the disk
    for c in cells:
        clat, clon = h3.cell_to_latlng(c)
        assert sphere_dist_m(lat, 9.19, clat, clon) <= radius_m + 1.3 * EDGE_M


def test_cover_cell_count_is_plausible_for_a_40_km_polygon():
    store = make_store(polygon_feature("wide", [regular_ring(45.4642, 9.19, 20_000, 96)]))
    f = store.fence
    assert 19_000 < f.bounding_radius_m < 21_000
    cells = cover(f)
    area = f.shape.area / 1e6
    perimeter = f.shape.length / 1000
    covered = sum(h3.cell_area(c, "km^2") for c in cells)
    assert covered >= area
    assert covered <= area + perimeter * 2 * 1.3 * EDGE_M / 1000 + 0.1
    assert len(set(cells)) == len(cells)


# ---------------------------------------------------------------------------------------------
# mutations and nearby


def test_upsert_replaces_and_drops_old_cells():
    a = make_store(circle_feature("s", 45.0, 9.0, 100))
    other = make_store(circle_feature("o", 45.0, 9.0015, 100))  # shares cells with a
    index = StoreIndex([a, other])
    assert [s.store_id for s in index.containing(45.0, 9.0)] == ["s"]
    before = index.cell_count
    dlat, _ = offset_deg(45.0, 0, 3000)
    moved = make_store(circle_feature("s", 45.0 + dlat, 9.0, 100, name="moved"))
    index.upsert(moved)
    assert len(index) == 2
    assert index.get("s") is moved
    assert list(index.containing(45.0, 9.0)) == []  # the old place
    assert all(s is not a for s in index.candidates(45.0, 9.0))
    assert all(s.store_id != "s" for s in index.candidates(45.0, 9.0))
    assert [s.store_id for s in index.containing(45.0 + dlat, 9.0)] == ["s"]
    # the other store lost nothing
    assert [s.store_id for s in index.containing(45.0, 9.0015)] == ["o"]
    assert index.cell_count == len(set(cover(other.fence)) | set(cover(moved.fence)))
    assert index.cell_count >= before
    # a cell held only by the old fence is gone from the table
    only_old = set(cover(a.fence)) - set(cover(other.fence))
    assert only_old
    for c in only_old:
        la, lo = h3.cell_to_latlng(c)
        assert index.candidates(la, lo) == ()


def test_remove():
    a = make_store(circle_feature("a", 45.0, 9.0, 100))
    b = make_store(circle_feature("b", 45.0, 9.0005, 100))
    index = StoreIndex([a, b])
    assert sorted(s.store_id for s in index.containing(45.0, 9.00025)) == ["a", "b"]
    assert index.remove("a") is True
    assert index.remove("a") is False
    assert index.get("a") is None
    assert [s.store_id for s in index.containing(45.0, 9.00025)] == ["b"]
    assert [s.store_id for s, _ in index.nearby(45.0, 9.0, 1000, 10)] == ["b"]
    assert index.remove("b") is True
    assert len(index) == 0 and index.cell_count == 0
    assert list(index.containing(45.0, 9.0)) == []
    assert index.nearby(45.0, 9.0, 10_000, 10) == []


def test_nearby_is_nearest_first_and_respects_radius_and_limit(fuel_80, nil):
    stores = list(fuel_80[0]) + list(nil[1])
    index = StoreIndex(stores)
    rng = np.random.default_rng(4)
    for lat, lon in [(45.4642, 9.19), (41.9028, 12.4964), (45.48, 9.21), (45.60, 9.30)] + [
            (float(rng.uniform(45.40, 45.55)), float(rng.uniform(9.05, 9.30))) for _ in range(10)]:
        for radius, limit in ((500, 5), (2000, 20), (5000, 1000), (0, 10)):
            got = index.nearby(lat, lon, radius, limit)
            brute = sorted(((s, max(0.0, s.fence.distance_outside_m(lat, lon))) for s in stores),
                           key=lambda p: (p[1], p[0].store_id))
            brute = [p for p in brute if p[1] <= radius][:limit]
            assert [(s.store_id, d) for s, d in got] == [(s.store_id, d) for s, d in brute]
            assert len(got) <= limit
            assert all(d <= radius for _, d in got)
            assert [d for _, d in got] == sorted(d for _, d in got)
    # a point inside a district: that district at distance 0 comes first
    got = index.nearby(45.4642, 9.19, 1000, 3)
    assert got[0][1] == 0.0 and got[0][0].fence.contains(45.4642, 9.19)
    # the limit cuts the nearest-first list
    many = index.nearby(45.4642, 9.19, 3000, 50)
    assert len(many) == 50
    assert index.nearby(45.4642, 9.19, 3000, 7) == many[:7]


def test_mixed_circle_and_polygon_index_against_brute_force(fuel_80, nil):
    """Stores of both kinds in one index, overlapping: the answers are still the brute force ones."""
    stores = list(fuel_80[0]) + list(nil[1])
    index = StoreIndex(stores)
    brute = BruteForce(stores)
    rng = np.random.default_rng(12)
    lats = rng.uniform(45.38, 45.54, 8000)
    lons = rng.uniform(9.03, 9.29, 8000)
    hits = assert_index_matches(index, brute, lats, lons)
    assert hits > 3000  # about half the box is the municipality (the districts), plus the stations


def test_batch_covering_equals_one_by_one_covering():
    """`cover_many` (bulk imports, index loads) and `cover` (single PUTs) keep the same cells."""
    from vicino.services.geo.domain.fences import CircleFence
    from vicino.services.geo.domain.h3_cells import cover, cover_many

    rng = random.Random(11)
    fences = []
    for _ in range(400):
        lat = rng.choice([rng.uniform(-60, 60), rng.uniform(60, 84), rng.uniform(-84, -60)])
        lon = rng.choice([rng.uniform(-180, 180), rng.uniform(179.9, 180), rng.uniform(-180, -179.9)])
        fences.append(CircleFence(lat, lon, rng.choice([10, 35, 80, 300, 1500, rng.uniform(10, 10_000)])))
    fences.append(store_from_feature({"type": "Feature", "id": "p", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[9.0, 45.0], [9.01, 45.0], [9.01, 45.01], [9.0, 45.0]]]}})[0].fence)
    batch = cover_many(fences)
    assert len(batch) == len(fences)
    for f, cells in zip(fences, batch):
        assert sorted(cells) == sorted(cover(f))
        assert len(cells) == len(set(cells)) and cells


def _nearby_brute(stores, lat, lon, radius, limit):
    every = sorted(((s, max(0.0, s.fence.distance_outside_m(lat, lon))) for s in stores),
                   key=lambda p: (p[1], p[0].store_id))
    return [(s.store_id, d) for s, d in every if d <= radius][:limit]


def _random_catalogue(rng: random.Random, n: int, sites) -> list[Store]:
    """n stores around a few sites (dense, up to ~60 km out): circles of 10 m-10 km, and
    polygons (rectangles and 5-12-gons) of 20 m-20 km; a few tied at one place."""
    out = []
    for i in range(n):
        lat0, lon0 = sites[i % len(sites)]
        dlat, dlon = offset_deg(lat0, rng.gauss(0, 15_000), rng.gauss(0, 15_000))
        lat, lon = max(-84.0, min(84.0, lat0 + dlat)), (lon0 + dlon + 180.0) % 360.0 - 180.0
        if i % 97 == 0:
            lat, lon = lat0, lon0  # several stores sharing one centre
        kind = rng.random()
        if kind < 0.75:
            out.append(make_store(circle_feature(f"r{i:05d}", lat, lon, rng.choice([10, 30, 80, 200, 1000, 10_000]))))
            continue
        if kind < 0.9:
            ring = rect_ring(lat, lon, rng.uniform(20, 3000), rng.uniform(20, 3000))
        else:
            ring = regular_ring(lat, lon, rng.uniform(30, 20_000), rng.randint(5, 12))
        ring = [[(x + 180.0) % 360.0 - 180.0, y] for x, y in ring]  # a ring across the antimeridian, wrapped
        out.append(make_store(polygon_feature(f"r{i:05d}", [ring])))
    return out


@pytest.mark.parametrize("sites", [
    [(45.4642, 9.19), (45.07, 7.69)],              # Milano and Torino, ~125 km apart
    [(69.65, 18.96), (-33.87, 151.21)],            # far north (Tromsø) and the southern hemisphere
    [(-17.7, 179.9), (64.8, -179.95)],             # both sides of the antimeridian (Fiji, Chukotka)
], ids=["lombardy", "north-and-south", "antimeridian"])
def test_nearby_equals_brute_force_on_thousands_of_random_stores(sites):
    rng = random.Random(zlib.crc32(repr(sites).encode()))
    stores = _random_catalogue(rng, 3000, sites)
    index = StoreIndex()
    for s in stores:
        index.upsert(s, [])  # no cells: nearby reads its own buckets, not the fix lookup table
    for q in range(12):
        lat0, lon0 = sites[q % len(sites)]
        dlat, dlon = offset_deg(lat0, rng.gauss(0, 25_000), rng.gauss(0, 25_000))
        lat, lon = lat0 + dlat, (lon0 + dlon + 180.0) % 360.0 - 180.0
        for radius, limit in ((0, 5), (300, 10), (5000, 50), (50_000, 1), (50_000, 50), (50_000, 500)):
            got = [(s.store_id, d) for s, d in index.nearby(lat, lon, radius, limit)]
            assert got == _nearby_brute(stores, lat, lon, radius, limit), (lat, lon, radius, limit)
    # and after changes: stores removed, moved, added
    for s in stores[::7]:
        index.remove(s.store_id)
    moved = [make_store(circle_feature(s.store_id, s.fence.centre[0] + 0.05, s.fence.centre[1], 500)) for s in stores[1::7]]
    for s in moved:
        index.upsert(s, [])
    current = {s.store_id: s for s in stores if s.store_id not in {x.store_id for x in stores[::7]}}
    current.update({s.store_id: s for s in moved})
    for q in range(10):
        lat, lon = sites[q % len(sites)]
        assert [(s.store_id, d) for s, d in index.nearby(lat, lon, 50_000, 200)] == \
            _nearby_brute(list(current.values()), lat, lon, 50_000, 200)


class _CountingCircle(CircleFence):
    """A circle fence that counts its exact distance evaluations."""

    evaluations = 0

    def distance_outside_m(self, lat: float, lon: float) -> float:
        type(self).evaluations += 1
        return super().distance_outside_m(lat, lon)


def test_nearby_work_follows_the_limit_not_the_stores_in_the_radius():
    rng = random.Random(5)
    index = StoreIndex()
    for i in range(5000):  # all within ~30 km of the point
        dlat, dlon = offset_deg(45.4642, rng.uniform(-20_000, 20_000), rng.uniform(-20_000, 20_000))
        store = make_store(circle_feature(f"c{i}", 45.4642 + dlat, 9.19 + dlon, 50))
        store.fence = _CountingCircle(store.fence.lat, store.fence.lon, store.fence.radius_m)
        index.upsert(store, [])
    _CountingCircle.evaluations = 0
    got = index.nearby(45.4642, 9.19, 50_000, 20)
    assert len(got) == 20
    assert _CountingCircle.evaluations <= 40  # not one per store within the radius (5,000)
