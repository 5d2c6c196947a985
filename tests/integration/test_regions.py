"""Region sync (`GET /v1/devices/{device_id}/regions`) on the real demo stores (the MIMIT fuel
stations of Milano and Roma and the NIL districts of Milano, polygons with a hole among them),
loaded as the demo loads them into a geo app on the real Redis fixture.

For random points in Milano and Roma, points near fence edges and points far from any store,
and limits 1, 20 and 100, against a brute force over every store (great-circle distances by
another formula than the service's, polygons' boundaries sampled every metre, containment by
shapely on lon/lat):
- every returned circle encloses every vertex and every sampled boundary point of its fence;
- no store nearer than the farthest returned one is left out, and the order is nearest first;
- the resync circle contains and touches no part of any store left out, and is not needlessly
  small;
and the refusals: consent, another device, roles, bad coordinates and limits. Nothing of the
point is stored."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from shapely.geometry import shape as geojson_shape

import redis as redis_lib

from vicino.services.geo.app import create_app
from vicino.services.geo.domain.regions import ELLIPSOID_SLACK, MARGIN_M, MAX_RESYNC_RADIUS_M
from vicino.services.launcher.demo import demo_files, post_features
from vicino.services.launcher.store_files import read_features
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.support import assert_problem, redis_dump
from tests.unit.test_regions import R, sphere_dist_m  # the oracle's great circle (atan2 form; the service: haversine)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOL_M = 0.6  # the brute force samples boundaries every metre: it may overstate a distance by 0.5 m
MILANO = ((45.40, 45.53), (9.05, 9.28))
ROMA = ((41.80, 41.98), (12.38, 12.62))


def unit_vectors(lats, lons) -> np.ndarray:
    p, lam = np.radians(lats), np.radians(lons)
    return np.column_stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)])


def destination(lat, lon, bearing_deg, dist_m):
    p1, l1, b, d = math.radians(lat), math.radians(lon), math.radians(bearing_deg), dist_m / R
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), math.degrees(l2)


class BruteForce:
    """Every demo store's fence, measured the slow way."""

    def __init__(self, features: list[dict]) -> None:
        circles = [f for f in features if f["geometry"]["type"] == "Point"]
        self.circle_ids = [str(f["id"]) for f in circles]
        self.c_lon, self.c_lat = (np.array([float(f["geometry"]["coordinates"][i]) for f in circles]) for i in (0, 1))
        self.c_r = np.array([float(f["properties"]["radius_m"]) for f in circles])
        polygons = [f for f in features if f["geometry"]["type"] != "Point"]
        self.poly_ids = [str(f["id"]) for f in polygons]
        self.shapes = [geojson_shape(f["geometry"]) for f in polygons]
        for s in self.shapes:
            shapely.prepare(s)
        self.has_hole = any(len(p.interiors) for s in self.shapes for p in getattr(s, "geoms", [s]))
        lats, lons, starts = [], [], []
        self.vertices = []
        n = 0
        for s in self.shapes:
            starts.append(n)
            rings = [r for p in getattr(s, "geoms", [s]) for r in [p.exterior, *p.interiors]]
            coords = [np.asarray(r.coords) for r in rings]
            self.vertices.append(np.concatenate(coords))
            for c in coords:
                for (lo1, la1), (lo2, la2) in zip(c[:-1], c[1:]):
                    k = max(1, int(math.ceil(float(sphere_dist_m(la1, lo1, la2, lo2)))))  # every metre
                    t = np.linspace(0.0, 1.0, k + 1)
                    lats.append(la1 + (la2 - la1) * t)
                    lons.append(lo1 + (lo2 - lo1) * t)
                    n += k + 1
        self.s_lat, self.s_lon = np.concatenate(lats), np.concatenate(lons)
        self.s_xyz = unit_vectors(self.s_lat, self.s_lon)
        self.starts = np.array(starts)
        self.ends = np.append(self.starts[1:], n)
        self._seen: dict[tuple[float, float], dict[str, float]] = {}  # the same points for every limit

    def distances(self, lat: float, lon: float) -> dict[str, float]:
        if (lat, lon) not in self._seen:
            self._seen[(lat, lon)] = self._distances(lat, lon)
        return self._seen[(lat, lon)]

    def _distances(self, lat: float, lon: float) -> dict[str, float]:
        out = dict(zip(self.circle_ids, np.maximum(sphere_dist_m(lat, lon, self.c_lat, self.c_lon) - self.c_r, 0.0).tolist()))
        # the nearest sample of each polygon by chord length (monotonic in the arc), then its arc
        chord2 = np.sum((self.s_xyz - unit_vectors(np.array([lat]), np.array([lon]))) ** 2, axis=1)
        mins = 2 * R * np.arcsin(np.sqrt(np.minimum.reduceat(chord2, self.starts)) / 2)
        point = shapely.Point(lon, lat)
        for sid, s, m in zip(self.poly_ids, self.shapes, mins.tolist()):
            out[sid] = 0.0 if s.intersects(point) else m
        return out

    def samples_of(self, store_id: str) -> tuple[np.ndarray, np.ndarray]:
        if store_id in self.circle_ids:  # the circle's own boundary, every degree of bearing
            i = self.circle_ids.index(store_id)
            pts = [destination(self.c_lat[i], self.c_lon[i], b, self.c_r[i]) for b in range(360)]
            return np.array([p[0] for p in pts] + [self.c_lat[i]]), np.array([p[1] for p in pts] + [self.c_lon[i]])
        i = self.poly_ids.index(store_id)
        v = self.vertices[i]
        return (np.concatenate([self.s_lat[self.starts[i]:self.ends[i]], v[:, 1]]),
                np.concatenate([self.s_lon[self.starts[i]:self.ends[i]], v[:, 0]]))


@pytest.fixture(scope="module")
def demo(redis_server):
    """A geo app on the session's Redis holding the demo stores, and two phones (one with consent)."""
    r = redis_lib.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    features: list[dict] = []
    for path in demo_files():
        features += read_features(path, default_radius_m=80.0)
    # the device limit of the defaults (60 at once) would cut this module's hundreds of requests short
    settings = make_settings(redis_server.url, rate_limit_device_burst=100_000)
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=ADMIN) as client:
        totals = post_features(client, features)
        assert totals["created"] == len(features) and not totals["rejected"], totals["rejected"][:3]
        phones = {}
        for device_id, customer_id, consent in (("phone-1", "cust-1", True), ("phone-2", "cust-2", False)):
            reg = client.post("/v1/devices", json={"device_id": device_id, "customer_id": customer_id,
                                                   "platform": "android", "push_token": "fcm-" + device_id})
            assert reg.status_code == 201, reg.text
            client.put(f"/v1/customers/{customer_id}/consent",
                       json={"location": consent, "marketing": False, "personalisation": False}).raise_for_status()
            phones[device_id] = {"Authorization": f"Bearer {reg.json()['token']}"}
        yield client, phones, features


@pytest.fixture(scope="module")
def brute(demo) -> BruteForce:
    return BruteForce(demo[2])


def test_the_demo_has_what_the_contract_is_tested_on(demo, brute):
    _, _, features = demo
    assert len(brute.circle_ids) > 2000 and len(brute.poly_ids) >= 80
    assert brute.has_hole  # a polygon with a hole: its circle must still enclose it all


def sample_points(seed: int = 16) -> list[tuple[float, float]]:
    """Random points in Milano and Roma, and points with few stores or none within 20 km."""
    rng = random.Random(seed)
    pts = [(rng.uniform(*MILANO[0]), rng.uniform(*MILANO[1])) for _ in range(30)]
    pts += [(rng.uniform(*ROMA[0]), rng.uniform(*ROMA[1])) for _ in range(20)]
    pts += [(44.70, 9.20), (45.20, 9.20), (42.40, 12.50), (41.55, 12.30)]  # sparse, or no store within 20 km
    return pts


def near_edges(brute: BruteForce, seed: int = 17) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    pts = []
    for _ in range(15):  # around a NIL district's vertex, within 30 m: inside, outside, on the line
        v = brute.vertices[rng.randrange(len(brute.vertices))]
        lon, lat = v[rng.randrange(len(v))]
        pts.append(destination(lat, lon, rng.uniform(0, 360), rng.uniform(0, 30)))
    for _ in range(10):  # just inside or outside a station's circle
        i = rng.randrange(len(brute.circle_ids))
        pts.append(destination(brute.c_lat[i], brute.c_lon[i], rng.uniform(0, 360), brute.c_r[i] + rng.uniform(-5, 5)))
    return pts


def check_plan(body: dict, truth: dict[str, float], brute: BruteForce, limit: int, checked_circles: dict) -> None:
    regions = body["regions"]
    ids = [g["store_id"] for g in regions]
    assert len(set(ids)) == len(ids) and len(ids) <= limit
    dists = [g["distance_m"] for g in regions]
    assert dists == sorted(dists), "nearest first"
    for g in regions:
        assert g["distance_m"] == pytest.approx(truth[g["store_id"]], abs=TOL_M)
        key = (g["store_id"], g["lat"], g["lon"], g["radius_m"])
        if key not in checked_circles:  # every point of the fence inside the circle
            la, lo = brute.samples_of(g["store_id"])
            worst = float(np.max(sphere_dist_m(g["lat"], g["lon"], la, lo)))
            assert worst <= g["radius_m"], (g, worst)
            checked_circles[key] = worst
    chosen = set(ids)
    left_out = min((d for sid, d in truth.items() if sid not in chosen), default=math.inf)
    if regions:
        assert left_out >= dists[-1] - TOL_M, "a store nearer than the farthest returned one was left out"
    resync = body["resync_radius_m"]
    assert 0 <= resync <= MAX_RESYNC_RADIUS_M
    if len(ids) < limit:  # fewer stores than asked within reach: all of them, and the widest resync
        assert resync == MAX_RESYNC_RADIUS_M and left_out > MAX_RESYNC_RADIUS_M * (1 + ELLIPSOID_SLACK)
    elif left_out > MARGIN_M + TOL_M:
        # clear of every store left out, measured by the phone (the sphere, or WGS84 within the slack)
        assert resync * (1 + ELLIPSOID_SLACK) < left_out, (resync, left_out)
        # and not needlessly small: within the margins of the nearest store left out
        assert resync >= min(MAX_RESYNC_RADIUS_M, (left_out - TOL_M - MARGIN_M) / (1 + ELLIPSOID_SLACK) - 0.02)
    else:  # the point is inside (or at the edge of) a store it was not given: ask again on any move
        assert resync <= TOL_M


@pytest.mark.parametrize("limit", [1, 20, 100])
def test_regions_keep_their_promises_on_the_demo_stores(demo, brute, limit):
    client, phones, _ = demo
    checked: dict = {}
    points = sample_points() + near_edges(brute)
    counts = []
    for lat, lon in points:
        r = client.get("/v1/devices/phone-1/regions", headers=phones["phone-1"],
                       params={"lat": lat, "lon": lon, "limit": limit})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["device_id"], body["lat"], body["lon"]) == ("phone-1", lat, lon)
        check_plan(body, brute.distances(lat, lon), brute, limit, checked)
        counts.append(len(body["regions"]))
    # the sample covered the cases that matter: full answers, short ones, empty ones, polygons
    assert counts.count(limit) >= 40 and 0 in counts
    assert any(sid.startswith("milano-nil-") for sid, *_ in checked)


def test_the_default_limit_is_20_and_a_support_key_sees_what_the_phone_sees(demo):
    client, phones, _ = demo
    point = {"lat": 45.4642, "lon": 9.19}
    mine = client.get("/v1/devices/phone-1/regions", headers=phones["phone-1"], params=point)
    assert mine.status_code == 200 and len(mine.json()["regions"]) == 20
    support = client.post("/v1/keys", json={"name": "support desk", "roles": ["support"]}).json()["key"]
    theirs = client.get("/v1/devices/phone-1/regions", headers={"Authorization": f"Bearer {support}"}, params=point)
    assert theirs.status_code == 200 and theirs.json() == mine.json()


def test_nothing_of_the_point_is_stored(demo, redis_server):
    client, phones, _ = demo
    r = redis_lib.Redis.from_url(redis_server.url)
    try:
        before = redis_dump(r)
        for lat, lon in ((45.471717, 9.201313), (41.902782, 12.496366)):
            assert client.get("/v1/devices/phone-1/regions", headers=phones["phone-1"],
                              params={"lat": lat, "lon": lon}).status_code == 200
        assert redis_dump(r) == before
    finally:
        r.close()


def test_without_location_consent_the_point_is_not_processed(demo):
    client, phones, _ = demo
    for who in (phones["phone-2"], ADMIN):
        assert_problem(client.get("/v1/devices/phone-2/regions", headers=who, params={"lat": 45.46, "lon": 9.19}),
                       409, "consent", "nothing was processed")


@pytest.mark.parametrize("params, words", [
    ({"lat": 91, "lon": 9.19}, ["lat"]),
    ({"lat": -90.5, "lon": 9.19}, ["lat"]),
    ({"lat": 45.46, "lon": 180.01}, ["lon"]),
    ({"lat": "nan", "lon": 9.19}, ["lat", "finite"]),
    ({"lat": 45.46, "lon": "inf"}, ["lon", "finite"]),
    ({"lat": 45.46, "lon": "-Infinity"}, ["lon", "finite"]),
    ({"lat": "north", "lon": 9.19}, ["lat", "number"]),
    ({"lon": 9.19}, ["lat", "required"]),
    ({"lat": 45.46, "lon": 9.19, "limit": 0}, ["limit", "greater than or equal to 1"]),
    ({"lat": 45.46, "lon": 9.19, "limit": 101}, ["limit", "less than or equal to 100"]),
    ({"lat": 45.46, "lon": 9.19, "limit": 2.5}, ["limit", "integer"]),
])
def test_bad_queries_are_a_422_naming_the_field(demo, params, words):
    client, phones, _ = demo
    assert_problem(client.get("/v1/devices/phone-1/regions", headers=phones["phone-1"], params=params), 422, *words)


def test_refusals_by_caller(demo):
    client, phones, _ = demo
    point = {"lat": 45.46, "lon": 9.19}
    assert_problem(client.get("/v1/devices/phone-2/regions", headers=phones["phone-1"], params=point), 403,
                   "own device")
    for role in ("analyst", "operator", "app_backend"):
        key = client.post("/v1/keys", json={"name": role, "roles": [role]}).json()["key"]
        assert_problem(client.get("/v1/devices/phone-1/regions", headers={"Authorization": f"Bearer {key}"},
                                  params=point), 403, "support")
    assert_problem(client.get("/v1/devices/no-such-phone/regions", params=point), 404, "not registered")
    assert_problem(client.get("/v1/devices/phone-1/regions", params=point, headers={"Authorization": ""}), 401)
