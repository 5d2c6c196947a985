"""Region sync's geometry (services/geo/domain/regions.py) against independent oracles.

The oracles: great-circle distances by the atan2 form (not the service's haversine), fences as
shapely polygons in lon/lat (the fences promise planar lon/lat semantics), their boundaries
sampled every metre or so, and, for the slack the answer keeps for the phone's own measure,
Vincenty's inverse formula on the WGS84 ellipsoid.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from vicino.services.geo.domain.fences import CircleFence
from vicino.services.geo.domain.geodesy import equidistant_xy
from vicino.services.geo.domain.geojson_codec import store_from_feature
from vicino.services.geo.domain.regions import (ELLIPSOID_SLACK, MARGIN_M, MAX_RESYNC_RADIUS_M, FenceOutlines,
                                                plan_regions, resync_radius_for)
from vicino.services.geo.domain.store_index import StoreIndex

R = 6_371_008.8


def sphere_dist_m(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2) - lon1)
    num = np.hypot(np.cos(p2) * np.sin(dl), np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl))
    den = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return R * np.arctan2(num, den)


def destination(lat, lon, bearing_deg, dist_m):
    p1, l1, b, d = math.radians(lat), math.radians(lon), math.radians(bearing_deg), dist_m / R
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 180.0) % 360.0 - 180.0


def vincenty_m(lat1, lon1, lat2, lon2) -> float:
    """WGS84 ellipsoidal distance (Vincenty's inverse; converges for the non-antipodal points here)."""
    a, f = 6_378_137.0, 1 / 298.257223563
    b = a * (1 - f)
    u1, u2 = math.atan((1 - f) * math.tan(math.radians(lat1))), math.atan((1 - f) * math.tan(math.radians(lat2)))
    big_l = math.radians(lon2 - lon1)
    lam = big_l
    for _ in range(200):
        sin_s = math.hypot(math.cos(u2) * math.sin(lam),
                           math.cos(u1) * math.sin(u2) - math.sin(u1) * math.cos(u2) * math.cos(lam))
        if sin_s == 0:
            return 0.0
        cos_s = math.sin(u1) * math.sin(u2) + math.cos(u1) * math.cos(u2) * math.cos(lam)
        sigma = math.atan2(sin_s, cos_s)
        sin_a = math.cos(u1) * math.cos(u2) * math.sin(lam) / sin_s
        cos2a = 1 - sin_a ** 2
        cos2sm = cos_s - 2 * math.sin(u1) * math.sin(u2) / cos2a if cos2a else 0.0
        c = f / 16 * cos2a * (4 + f * (4 - 3 * cos2a))
        prev = lam
        lam = big_l + (1 - c) * f * sin_a * (sigma + c * sin_s * (cos2sm + c * cos_s * (-1 + 2 * cos2sm ** 2)))
        if abs(lam - prev) < 1e-13:
            break
    u_sq = cos2a * (a * a - b * b) / (b * b)
    aa = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    bb = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    ds = bb * sin_s * (cos2sm + bb / 4 * (cos_s * (-1 + 2 * cos2sm ** 2)
                                          - bb / 6 * cos2sm * (-3 + 4 * sin_s ** 2) * (-3 + 4 * cos2sm ** 2)))
    return b * aa * (sigma - ds)


def polygon_feature(store_id, rings):
    return {"type": "Feature", "id": store_id, "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"name": store_id}}


def circle_feature(store_id, lat, lon, radius_m, **props):
    return {"type": "Feature", "id": store_id, "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"radius_m": radius_m, **props}}


def blob(lat, lon, radius_m, n, rng, hole=False):
    """A star-shaped polygon around (lat, lon), optionally with a hole in the middle, as GeoJSON rings."""
    ring = []
    for i in range(n):
        la, lo = destination(lat, lon, 360 * i / n, radius_m * rng.uniform(0.4, 1.0))
        ring.append([lo, la])
    ring.append(ring[0])
    rings = [ring]
    if hole:
        inner = [[lo, la] for la, lo in (destination(lat, lon, b, radius_m * 0.15) for b in (0, 120, 240))]
        rings.append(inner + [inner[0]])
    return rings


def unwrapped(rings, lon0):
    """The rings with every longitude within 180 degrees of lon0 (a fence across the antimeridian in one piece)."""
    return [[[lon0 + (lo - lon0 + 180) % 360 - 180, la] for lo, la in ring] for ring in rings]


def boundary_samples(rings, step_m=1.0):
    """Points every `step_m` or so along every ring, straight in lon/lat (the fence's edges)."""
    lats, lons = [], []
    for ring in unwrapped(rings, rings[0][0][0]):
        for (lo1, la1), (lo2, la2) in zip(ring[:-1], ring[1:]):
            n = max(1, int(math.ceil(float(sphere_dist_m(la1, lo1, la2, lo2)) / step_m)))
            t = np.linspace(0, 1, n + 1)
            lats.append(la1 + (la2 - la1) * t)
            lons.append(lo1 + (lo2 - lo1) * t)
    return np.concatenate(lats), np.concatenate(lons)


def brute_distance(rings, lat, lon):
    lon0 = rings[0][0][0]
    flat = unwrapped(rings, lon0)
    poly = shapely.Polygon(flat[0], flat[1:])
    if poly.intersects(shapely.Point(lon0 + (lon - lon0 + 180) % 360 - 180, lat)):
        return 0.0
    la, lo = boundary_samples(rings)
    return float(np.min(sphere_dist_m(lat, lon, la, lo)))


# --- the projection ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(lat=st.floats(-84, 84), lon=st.floats(-180, 180), bearing=st.floats(0, 360), dist=st.floats(0, 60_000))
def test_the_equidistant_projection_keeps_every_distance_from_its_centre(lat, lon, bearing, dist):
    la, lo = destination(lat, lon, bearing, dist)
    x, y = equidistant_xy(lat, lon, np.array([la]), np.array([lo]))
    assert math.hypot(x[0], y[0]) == pytest.approx(float(sphere_dist_m(lat, lon, la, lo)), abs=1e-4)
    if dist > 1:  # and the direction is the bearing
        assert abs((math.degrees(math.atan2(x[0], y[0])) - bearing + 180) % 360 - 180) < 1e-4


def test_the_sphere_and_the_phone_s_ellipsoid_differ_by_less_than_the_slack():
    rng = random.Random(7)
    worst = 0.0
    for _ in range(2000):
        lat, lon = rng.uniform(-85, 85), rng.uniform(-180, 180)
        la, lo = destination(lat, lon, rng.uniform(0, 360), rng.uniform(50, 60_000))
        s = float(sphere_dist_m(lat, lon, la, lo))
        worst = max(worst, abs(vincenty_m(lat, lon, la, lo) - s) / s)
    assert 0.003 < worst < ELLIPSOID_SLACK  # near the real bound (0.56 %), and under the slack


# --- fences: distance and enclosing circle -------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), lat=st.floats(-80, 80), lon=st.floats(-180, 180),
       radius=st.floats(30, 3000), hole=st.booleans())
def test_a_polygon_s_distance_and_circle_match_the_brute_force(seed, lat, lon, radius, hole):
    rng = random.Random(seed)
    rings = blob(lat, lon, radius, rng.randint(3, 30), rng, hole)
    store, _ = store_from_feature(polygon_feature("p", rings))
    outlines = FenceOutlines()
    circle = outlines.enclosing(store.fence)
    la, lo = boundary_samples(rings)
    assert np.all(sphere_dist_m(circle.lat, circle.lon, la, lo) <= circle.radius_m)
    # not a lazy circle: within the slack of the smallest enclosing one, with a little room
    assert circle.radius_m <= 1.1 * float(np.max(sphere_dist_m(lat, lon, la, lo))) * (1 + ELLIPSOID_SLACK) + MARGIN_M
    for _ in range(8):  # points around it, inside, in the hole, near the edges, far away
        pla, plo = destination(lat, lon, rng.uniform(0, 360), rng.choice([0, 0.1, 0.9, 1.0, 1.3, 3, 30]) * radius)
        expected = brute_distance(rings, pla, plo)
        assert outlines.distance_m(store.fence, pla, plo) == pytest.approx(expected, abs=0.6)


def test_a_polygon_across_the_antimeridian():
    rings = [[[179.99, -16.0], [-179.99, -16.0], [-179.99, -16.01], [179.99, -16.01], [179.99, -16.0]]]
    store, _ = store_from_feature(polygon_feature("fiji", rings))
    outlines = FenceOutlines()
    circle = outlines.enclosing(store.fence)
    la, lo = boundary_samples(rings)
    assert np.all(sphere_dist_m(circle.lat, circle.lon, la, lo) <= circle.radius_m) and circle.radius_m < 1500
    assert outlines.distance_m(store.fence, -16.005, 180.0) == 0.0
    assert outlines.distance_m(store.fence, -16.02, -179.995) == pytest.approx(
        float(sphere_dist_m(-16.02, -179.995, -16.01, -179.995)), abs=0.5)


def test_a_circle_fence_is_its_own_region_widened_by_the_slack():
    fence = CircleFence(45.0, 9.0, 80.0)
    c = FenceOutlines().enclosing(fence)
    assert (c.lat, c.lon) == (45.0, 9.0) and c.radius_m == math.ceil((80 * (1 + ELLIPSOID_SLACK) + MARGIN_M) * 100) / 100


def test_the_outline_cache_is_bounded_and_follows_the_fence_object():
    rng = random.Random(1)
    outlines = FenceOutlines(capacity=3)
    stores = [store_from_feature(polygon_feature(f"p{i}", blob(45, 9 + i / 100, 100, 8, rng)))[0] for i in range(5)]
    for s in stores:
        outlines.distance_m(s.fence, 44.9, 9.0)
    assert len(outlines._entries) == 3
    assert outlines.outline(stores[-1].fence) is outlines.outline(stores[-1].fence)


# --- the plan ---------------------------------------------------------------------------------

def test_resync_radius_keeps_clear_of_the_nearest_left_out():
    assert resync_radius_for(0.0) == 0.0 and resync_radius_for(0.5) == 0.0
    for d in (1.5, 10.0, 999.99, 15_000.0):
        r = resync_radius_for(d)
        assert 0 < r and r * (1 + ELLIPSOID_SLACK) + MARGIN_M <= d
        assert r >= (d - MARGIN_M) / (1 + ELLIPSOID_SLACK) - 0.011  # rounded down to the centimetre, no more


def world(seed: int, n: int, lat0: float, lon0: float, span_m: float):
    """n random stores around a point: circles of 10-500 m and polygons (some with holes), a few disabled."""
    rng = random.Random(seed)
    features, rings_of = [], {}
    for i in range(n):
        lat, lon = destination(lat0, lon0, rng.uniform(0, 360), span_m * math.sqrt(rng.random()))
        sid = f"s{i:03d}"
        if rng.random() < 0.3:
            rings = blob(lat, lon, rng.uniform(40, 1500), rng.randint(3, 12), rng, rng.random() < 0.3)
            features.append(polygon_feature(sid, rings))
            rings_of[sid] = rings
        else:
            features.append(circle_feature(sid, lat, lon, rng.uniform(10, 500), enabled=rng.random() > 0.05))
    stores = [store_from_feature(f)[0] for f in features]
    return stores, rings_of, rng


def brute_store_distance(store, rings_of, lat, lon):
    if isinstance(store.fence, CircleFence):
        return max(0.0, float(sphere_dist_m(lat, lon, store.fence.lat, store.fence.lon)) - store.fence.radius_m)
    return brute_distance(rings_of[store.store_id], lat, lon)


@pytest.mark.parametrize("seed, lat0, lon0", [(1, 45.46, 9.19), (2, 41.9, 12.5), (3, 69.6, 18.9), (4, -33.9, 151.2)])
def test_the_plan_keeps_its_promises_on_random_worlds(seed, lat0, lon0):
    stores, rings_of, rng = world(seed, 150, lat0, lon0, 8000)
    index = StoreIndex(stores)
    outlines = FenceOutlines()
    for _ in range(12):
        lat, lon = destination(lat0, lon0, rng.uniform(0, 360), rng.uniform(0, 12_000))
        truth = {s.store_id: brute_store_distance(s, rings_of, lat, lon) for s in stores if s.enabled}
        for limit in (1, 5, 20, 100):
            plan = plan_regions(index, outlines, lat, lon, limit)
            ids = [r.store.store_id for r in plan.regions]
            assert len(ids) == min(limit, len(truth)) and len(set(ids)) == len(ids)
            assert all(s.enabled for s in (r.store for r in plan.regions))
            dists = [r.distance_m for r in plan.regions]
            assert dists == sorted(dists)
            for r in plan.regions:
                assert r.distance_m == pytest.approx(truth[r.store.store_id], abs=0.6)
            farthest = dists[-1]
            left_out = sorted(d for sid, d in truth.items() if sid not in set(ids))
            assert not left_out or left_out[0] >= farthest - 0.6  # nothing nearer left out
            if left_out and left_out[0] > MARGIN_M + 0.6:
                assert left_out[0] > plan.resync_radius_m * (1 + ELLIPSOID_SLACK)  # nothing left out reaches in
                assert plan.resync_radius_m >= (left_out[0] - 0.6 - MARGIN_M) / (1 + ELLIPSOID_SLACK) - 0.02
            elif left_out:
                assert plan.resync_radius_m <= 0.6
            else:
                assert plan.resync_radius_m == MAX_RESYNC_RADIUS_M


def test_with_no_store_in_reach_the_plan_is_empty_with_the_largest_resync():
    index = StoreIndex([store_from_feature(circle_feature("far", 45.0, 9.0, 50))[0]])
    plan = plan_regions(index, FenceOutlines(), 45.0, 9.4, 20)  # 31 km away
    assert plan.regions == [] and plan.resync_radius_m == MAX_RESYNC_RADIUS_M
    near = plan_regions(index, FenceOutlines(), 45.0, 9.1, 20)  # 7.8 km: returned, nothing left out
    assert [r.store.store_id for r in near.regions] == ["far"] and near.resync_radius_m == MAX_RESYNC_RADIUS_M


def test_inside_more_fences_than_the_limit_the_resync_radius_is_zero():
    stores = [store_from_feature(circle_feature(f"c{i}", 45.0, 9.0 + i * 1e-5, 100))[0] for i in range(3)]
    plan = plan_regions(StoreIndex(stores), FenceOutlines(), 45.0, 9.0, 2)
    assert [r.store.store_id for r in plan.regions] == ["c0", "c1"] and plan.resync_radius_m == 0.0
