"""A 20,000-store import in one request (correctness only), then what /metrics, /readyz and
/healthz tell an operator."""
from __future__ import annotations

import random
import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from vicino.services.geo.adapters.redis_keys import STORES_FEATURES
from vicino.services.geo.app import create_app
from vicino.services.launcher.demo import demo_files
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from vicino.services.launcher.store_files import read_features
from tests.conftest import circle_store, fix, make_settings, register

from tests.support import assert_problem

N_STORES = 20_000
HOURS = ["Mo-Sa 07:00-21:00; Su 08:00-13:00", "Mo-Fr 08:30-19:30; Sa 09:00-13:00", "24/7", None]


def realistic_stores(n: int = N_STORES) -> list[dict]:
    """The demo's real MIMIT fuel stations and Milano NIL districts, then shifted copies of the
    stations (ids `<id>-c<k>`) with varied radii, brands and opening hours, up to n features."""
    base: list[dict] = []
    for path in demo_files():
        base += read_features(path, default_radius_m=80)
    points = [f for f in base if f["geometry"]["type"] == "Point"]
    out = list(base)
    rnd = random.Random(20_000)
    copy = 0
    while len(out) < n:
        copy += 1
        for f in points:
            if len(out) >= n:
                break
            lon, lat = f["geometry"]["coordinates"]
            props = {**f["properties"], "radius_m": rnd.choice([30, 50, 80, 120, 200])}
            hours = rnd.choice(HOURS)
            if hours:
                props["opening_hours"] = hours
            out.append({"type": "Feature", "id": f"{f['id']}-c{copy}",
                        "geometry": {"type": "Point", "coordinates": [lon + rnd.uniform(-0.03, 0.03),
                                                                      lat + rnd.uniform(-0.03, 0.03)]},
                        "properties": props})
    return out


def metrics(client) -> dict:
    """{(sample name, frozenset(labels)): value} of the /metrics page."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(m: dict, name: str, **labels) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def test_bulk_import_of_20000_stores(client, admin, redis_sync, settings):
    features = realistic_stores()
    assert len(features) == N_STORES and len({f["id"] for f in features}) == N_STORES
    assert sum(f["geometry"]["type"] == "Polygon" or f["geometry"]["type"] == "MultiPolygon" for f in features) >= 80

    collection = {"type": "FeatureCollection", "features": features}
    r = client.post("/v1/stores", headers=admin, json=collection)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert (body["created"], body["updated"], body["rejected"]) == (N_STORES, 0, [])
    assert all("duplicate" not in w["warning"] for w in body["warnings"])
    assert redis_sync.hlen(STORES_FEATURES) == N_STORES

    r = client.post("/v1/stores", headers=admin, json=collection)
    assert r.status_code == 200
    assert (r.json()["created"], r.json()["updated"], r.json()["rejected"]) == (0, N_STORES, [])
    assert redis_sync.hlen(STORES_FEATURES) == N_STORES

    m = metrics(client)
    assert sample(m, "vicino_geo_index_stores") == N_STORES
    assert sample(m, "vicino_geo_index_cells") > N_STORES

    # spot checks: a copy and an original are served as stored, and found where they are
    rnd = random.Random(1)
    for f in rnd.sample(features, 25):
        got = client.get(f"/v1/stores/{f['id']}", headers=admin)
        assert got.status_code == 200, f["id"]
        assert got.json()["id"] == f["id"] and got.json()["geometry"]["type"] == f["geometry"]["type"]
        if f["geometry"]["type"] == "Point":
            lon, lat = f["geometry"]["coordinates"]
            near = client.get("/v1/stores", headers=admin, params={"lat": lat, "lon": lon, "radius_m": 1, "limit": 500})
            assert f["id"] in [s["store_id"] for s in near.json()]

    # and a fresh replica loads all of them from Redis at start
    with TestClient(create_app(settings)) as fresh:
        assert sample(metrics(fresh), "vicino_geo_index_stores") == N_STORES
        assert fresh.get("/readyz").status_code == 200


def test_metrics_per_route_fixes_events_and_index(client, admin):
    for i in range(3):
        assert client.put(f"/v1/stores/m{i}", headers=admin, json=circle_store(f"m{i}", 45.0 + i, 9.0, 50)).status_code == 201
    assert client.put("/v1/stores/m0", headers=admin, json=circle_store("m0", 45.0, 9.0, 60)).status_code == 200
    assert client.delete("/v1/stores/m2", headers=admin).status_code == 204
    assert client.get("/v1/stores/nope", headers=admin).status_code == 404
    assert client.get("/v1/nowhere", headers=admin).status_code == 404  # without a credential: 401
    dev = register(client, "dev-m", "cust-m")
    t0 = time.time() - 600
    r = client.post("/v1/locations", headers=dev, json={"device_id": "dev-m", "fixes": [
        fix(45.0, 9.0, t0), fix(45.0, 9.0, t0), fix(45.0, 9.0, t0 + 10, accuracy_m=900), fix(45.0, 9.0, t0 + 400),
        fix(46.0, 9.0, t0 + 500)]})
    assert [(e["type"], e["store_id"]) for e in r.json()["events"]] == [
        ("enter", "m0"), ("dwell", "m0"), ("enter", "m1"), ("exit", "m0")]
    assert client.post("/v1/locations", headers=dev, json={"device_id": "dev-m", "fixes": []}).status_code == 422

    m = metrics(client)
    req = "vicino_http_requests_total"
    assert sample(m, req, service="geo", method="PUT", route="/v1/stores/{store_id}", status="201") == 3
    assert sample(m, req, service="geo", method="PUT", route="/v1/stores/{store_id}", status="200") == 1
    assert sample(m, req, service="geo", method="DELETE", route="/v1/stores/{store_id}", status="204") == 1
    assert sample(m, req, service="geo", method="GET", route="/v1/stores/{store_id}", status="404") == 1
    assert sample(m, req, service="geo", method="GET", route="unmatched", status="404") == 1
    assert sample(m, req, service="geo", method="POST", route="/v1/locations", status="200") == 1
    assert sample(m, req, service="geo", method="POST", route="/v1/locations", status="422") == 1
    assert sample(m, req, service="geo", method="POST", route="/v1/devices", status="201") == 1
    assert not any(n == req and dict(lb).get("route", "").startswith("/v1/stores/m") for n, lb in m)  # templates only

    hist = "vicino_http_request_duration_seconds"
    for method, route, count in [("PUT", "/v1/stores/{store_id}", 4), ("POST", "/v1/locations", 2),
                                 ("GET", "/v1/stores/{store_id}", 1)]:
        labels = dict(service="geo", method=method, route=route)
        assert sample(m, hist + "_count", **labels) == count
        assert sample(m, hist + "_sum", **labels) > 0
        assert sample(m, hist + "_bucket", **labels, le="+Inf") == count
        buckets = sorted((float(dict(lb)["le"]), v) for (n, lb), v in m.items()
                         if n == hist + "_bucket" and dict(lb).get("route") == route and dict(lb).get("method") == method)
        assert len(buckets) > 5 and [v for _, v in buckets] == sorted(v for _, v in buckets)

    assert sample(m, "vicino_geo_fixes_total", outcome="accepted") == 3
    assert sample(m, "vicino_geo_fixes_total", outcome="duplicate") == 1
    assert sample(m, "vicino_geo_fixes_total", outcome="low_accuracy") == 1
    assert sample(m, "vicino_geo_events_total", type="enter") == 2
    assert sample(m, "vicino_geo_events_total", type="dwell") == 1
    assert sample(m, "vicino_geo_events_total", type="exit") == 1
    assert sample(m, "vicino_geo_index_stores") == 2
    assert sample(m, "vicino_geo_index_seq") == 5  # three PUTs, a replace and a delete


def test_healthz_and_readyz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "service": "geo"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "service": "geo", "checks": {"redis": "ok", "store_index": "ok"}}


def test_readyz_is_503_when_redis_is_gone(tmp_path, redis_server):
    own = EmbeddedRedis(tmp_path / "own-redis", persist=False).start()
    try:
        with TestClient(create_app(make_settings(own.url)), raise_server_exceptions=False) as c:
            assert c.get("/readyz").status_code == 200
            own.stop()
            started = time.monotonic()
            r = c.get("/readyz")
            assert time.monotonic() - started < 10
            assert_problem(r, 503, "redis: unreachable")
            assert c.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        own.stop()
