"""Every bad input gets a 4xx problem+json whose detail says what was wrong, never a 500, and
leaves what is already stored exactly as it was (every Redis key compared before and after)."""
from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from vicino.services.geo.adapters.redis_keys import STORES_FEATURES, DeviceKeys
from vicino.services.kernel.auth import DeviceClaims, TokenSigner
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET, circle_store, fix, register

from tests.support import assert_problem, epoch, redis_dump

LOC = "/v1/locations"
JSON = {"content-type": "application/json"}


@pytest.fixture
def world(client, admin, redis_sync):
    """Two stores, a device with consent that is inside s1 (state and an enter event stored)."""
    assert client.put("/v1/stores/s1", headers=admin, json=circle_store("s1", 45.0, 9.0, 50)).status_code == 201
    square = {"type": "Feature", "id": "p1", "properties": {"name": "square"},
              "geometry": {"type": "Polygon", "coordinates": [[[9.1, 45.1], [9.101, 45.1], [9.101, 45.101],
                                                               [9.1, 45.101], [9.1, 45.1]]]}}
    assert client.put("/v1/stores/p1", headers=admin, json=square).status_code == 201
    dev = register(client)
    r = client.post(LOC, headers=dev, json={"device_id": "dev-1", "fixes": [fix(45.0, 9.0, time.time() - 120)]})
    assert r.status_code == 200 and [e["type"] for e in r.json()["events"]] == ["enter"], r.text
    assert redis_sync.exists(DeviceKeys("dev-1", 16).state)
    return dev


@pytest.fixture
def unchanged(redis_sync):
    """`with unchanged(): ...` asserts that no Redis key was added, removed or altered."""
    @contextlib.contextmanager
    def check():
        before = redis_dump(redis_sync)
        yield
        after = redis_dump(redis_sync)
        assert after.keys() == before.keys(), f"keys added {after.keys() - before.keys()}, removed {before.keys() - after.keys()}"
        for k in before:
            assert after[k] == before[k], f"{k!r} changed"
    return check


def batch(*fixes, device_id="dev-1") -> dict:
    return {"device_id": device_id, "fixes": list(fixes)}


def raw_fix(lat="45.0", lon="9.0", acc="10", ts=None) -> str:
    ts = repr(time.time() - 60) if ts is None else ts
    return f'{{"device_id":"dev-1","fixes":[{{"lat":{lat},"lon":{lon},"accuracy_m":{acc},"ts":{ts}}}]}}'


# fixes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lat,lon,field,words", [
    (90.0001, 9.0, "fixes[0].lat", "less than or equal to 90"),
    (-90.5, 9.0, "fixes[0].lat", "greater than or equal to -90"),
    (45.0, 180.01, "fixes[0].lon", "less than or equal to 180"),
    (45.0, -181.0, "fixes[0].lon", "greater than or equal to -180"),
])
def test_out_of_range_coordinates(client, world, unchanged, lat, lon, field, words):
    with unchanged():
        assert_problem(client.post(LOC, headers=world, json=batch(fix(lat, lon))), 422, field, words)


def test_extreme_but_valid_coordinates_are_accepted(client, world):
    t = time.time() - 50
    r = client.post(LOC, headers=world, json=batch(fix(90, 180, t), fix(-90, -180, t + 1), fix(0, 0, t + 2)))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3


@pytest.mark.parametrize("body,field,words", [
    (raw_fix(lat="NaN"), "fixes[0].lat", "finite"),
    (raw_fix(lon="Infinity"), "fixes[0].lon", "finite"),
    (raw_fix(lon="-Infinity"), "fixes[0].lon", "finite"),
    (raw_fix(lat="1e400"), "fixes[0].lat", "finite"),  # overflows to inf when parsed
    (raw_fix(acc="NaN"), "fixes[0].accuracy_m", "finite"),
    (raw_fix(ts="NaN"), "fixes[0].ts", "finite"),
    (raw_fix(ts="Infinity"), "fixes[0].ts", "finite"),
    # integers beyond float range: Python's JSON parser keeps them exact, float() overflows
    (raw_fix(ts="1" + "0" * 400), "fixes[0].ts", "out of range"),
    (raw_fix(lat="1" + "0" * 400), "fixes[0].lat", "number"),
    (raw_fix(acc="-1" + "0" * 400), "fixes[0].accuracy_m", "number"),
])
def test_non_finite_numbers_in_raw_json(client, world, unchanged, body, field, words):
    with unchanged():
        assert_problem(client.post(LOC, headers={**world, **JSON}, content=body), 422, field, words)


@pytest.mark.parametrize("accuracy", [0, -1, -0.0001])
def test_accuracy_must_be_positive(client, world, unchanged, accuracy):
    with unchanged():
        assert_problem(client.post(LOC, headers=world, json=batch(fix(45.0, 9.0, accuracy_m=accuracy))),
                       422, "fixes[0].accuracy_m", "greater than 0")


def test_fix_more_than_five_minutes_in_the_future(client, world, unchanged):
    now = time.time()
    with unchanged():
        # one good fix and one too far ahead: the whole batch is refused, nothing processed
        body = assert_problem(client.post(LOC, headers=world, json=batch(fix(45.0, 9.0, now - 10), fix(45.0, 9.0, now + 400))),
                              422, "fixes[1].ts", "in the future", "nothing in this batch was processed")
        assert body["errors"][0]["field"] == "fixes[1].ts"
    # 4 minutes ahead is within the tolerance
    assert client.post(LOC, headers=world, json=batch(fix(45.0, 9.0, now + 240))).status_code == 200


def test_fix_older_than_the_horizon(client, world, unchanged):
    now = time.time()
    with unchanged():
        assert_problem(client.post(LOC, headers=world, json=batch(fix(45.0, 9.0, now - 86_400 - 120))),
                       422, "fixes[0].ts", "old")
        assert_problem(client.post(LOC, headers=world, json=batch(fix(45.0, 9.0, -1e308))), 422, "fixes[0].ts",
                       "before 1970")
    assert client.post(LOC, headers=world, json=batch(fix(45.0, 9.0, now - 86_400 + 600))).status_code == 200


def test_many_bad_fixes_are_summarised(client, world, unchanged):
    with unchanged():
        body = assert_problem(client.post(LOC, headers=world, json=batch(*[fix(45.0, 9.0, time.time() + 3600)] * 8)),
                              422, "and 3 more")
        assert len(body["errors"]) == 8


def test_rfc3339_timestamps(client, world, redis_sync):
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=90)
    with_z = base.strftime("%Y-%m-%dT%H:%M:%SZ")
    with_offset = (base + timedelta(seconds=10)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert with_offset.endswith("+02:00")
    r = client.post(LOC, headers=world, json=batch({"lat": 45.1005, "lon": 9.1005, "accuracy_m": 5, "ts": with_z},
                                                   {"lat": 45.1005, "lon": 9.1005, "accuracy_m": 5, "ts": with_offset}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    enter = [e for e in body["events"] if e["type"] == "enter" and e["store_id"] == "p1"]
    assert len(enter) == 1 and epoch(enter[0]["ts"]) == base.timestamp()  # the Z time, read as UTC, answered in UTC

    naive = (base + timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%S")
    before = redis_dump(redis_sync)
    assert_problem(client.post(LOC, headers=world, json=batch({"lat": 45.0, "lon": 9.0, "accuracy_m": 5, "ts": naive})),
                   422, "fixes[0].ts", "offset")
    assert_problem(client.post(LOC, headers=world, json=batch({"lat": 45.0, "lon": 9.0, "accuracy_m": 5, "ts": "yesterday"})),
                   422, "fixes[0].ts", "RFC 3339")
    assert_problem(client.post(LOC, headers=world, json=batch({"lat": 45.0, "lon": 9.0, "accuracy_m": 5, "ts": True})),
                   422, "fixes[0].ts")
    assert redis_dump(redis_sync) == before


def test_epoch_seconds_int_and_float_are_accepted(client, world):
    t = int(time.time()) - 30
    r = client.post(LOC, headers=world, json=batch(fix(45.2, 9.2, t), fix(45.2, 9.2, t + 1.5)))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2


def test_zero_and_501_fixes(client, world, unchanged):
    t = time.time() - 100  # after the world's fix (now - 120)
    with unchanged():
        assert_problem(client.post(LOC, headers=world, json=batch()), 422, "fixes", "at least 1")
        assert_problem(client.post(LOC, headers=world, json=batch(*[fix(45.3, 9.3, t + i / 10) for i in range(501)])),
                       422, "fixes", "at most 500")
    r = client.post(LOC, headers=world, json=batch(*[fix(45.3, 9.3, t + i / 10) for i in range(500)]))
    assert r.status_code == 200 and r.json()["accepted"] == 500, r.text[:300]


def test_body_over_one_mebibyte(client, world, admin, unchanged):
    big = b'{"device_id":"dev-1","fixes":[' + b" " * (1 << 20) + b"]}"
    feature = json.dumps(circle_store("s1", 45.0, 9.0, 80, note="x" * (1 << 20))).encode()
    with unchanged():
        assert_problem(client.post(LOC, headers={**world, **JSON}, content=big), 413, "exceeds 1048576 bytes")
        # streamed without Content-Length: counted as it arrives
        chunks = iter([b" " * 65536] * 17 + [b"{}"])
        assert_problem(client.post(LOC, headers={**world, **JSON}, content=chunks), 413, "exceeds")
        assert_problem(client.put("/v1/stores/s1", headers={**admin, **JSON}, content=feature), 413, "exceeds")
    # the bulk route has its own, larger limit
    fc = {"type": "FeatureCollection", "features": [circle_store("big", 45.5, 9.5, 50, note="y" * (1 << 20))]}
    r = client.post("/v1/stores", headers=admin, json=fc)
    assert r.status_code == 200 and r.json()["created"] == 1, r.text


@pytest.mark.parametrize("method,path,words", [
    ("POST", LOC, "JSON"),
    ("PUT", "/v1/stores/s1", "not valid JSON"),
    ("POST", "/v1/stores", "not valid JSON"),
    ("POST", "/v1/devices", "JSON"),
    ("PUT", "/v1/customers/cust-1/consent", "JSON"),
])
def test_malformed_json(client, world, admin, unchanged, method, path, words):
    headers = {**(world if path == LOC else admin), **JSON}
    with unchanged():
        for text in ('{"device_id": "dev-1", "fixes": [', "{'single': 'quotes'}", "{nope}", '{"a": 1}}'):
            assert_problem(client.request(method, path, headers=headers, content=text), 422, words)


def test_wrong_content(client, world, unchanged):
    good = json.dumps(batch(fix(45.0, 9.0)))
    with unchanged():
        assert_problem(client.post(LOC, headers={**world, "content-type": "text/plain"}, content=good), 415,
                       "text/plain", "application/json")
        assert_problem(client.post(LOC, headers=world, data={"device_id": "dev-1"}), 415, "application/json")
        assert_problem(client.post(LOC, headers=world, json=[batch(fix(45.0, 9.0))]), 422, "object")
        assert_problem(client.post(LOC, headers=world, json={"device_id": "dev-1", "fixes": {"lat": 1}}), 422,
                       "fixes", "valid array")
        assert_problem(client.post(LOC, headers=world, json={"fixes": [fix(45.0, 9.0)]}), 422, "device_id", "required")
        assert_problem(client.post(LOC, headers=world, json=batch({"lat": 45.0, "lon": 9.0, "ts": time.time()})),
                       422, "fixes[0].accuracy_m", "required")
        assert_problem(client.post(LOC, headers=world, json=batch(fix("north", 9.0))), 422, "fixes[0].lat", "number")
        assert_problem(client.post(LOC, headers={**world, **JSON}, content=b""), 422)


def test_deeply_nested_json_is_a_client_error(client, world, admin, unchanged):
    with unchanged():
        r = client.post(LOC, headers={**world, **JSON}, content="[" * 100_000)
        assert 400 <= r.status_code < 500
        assert_problem(r, r.status_code)
        assert_problem(client.put("/v1/stores/s1", headers={**admin, **JSON}, content="[" * 100_000), 422, "JSON")


def test_unknown_device(client, world, redis_sync, unchanged):
    # a signed token of a device with no registration: its credential failed (401), as on every route
    redis_sync.delete(DeviceKeys("dev-1", 16).registration)
    with unchanged():
        assert_problem(client.post(LOC, headers=world, json=batch(fix(45.0, 9.0))), 401, "revoked", code="token_revoked")


# tokens --------------------------------------------------------------------------------------------

def _token_id(redis_sync, device_id="dev-1") -> str:
    return redis_sync.hget(DeviceKeys(device_id, 16).registration, "token_id").decode()


def test_bad_tokens_are_401(client, world, redis_sync, unchanged):
    valid = world["Authorization"].removeprefix("Bearer ")
    version, payload, sig = valid.split(".")
    tampered_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    expired = TokenSigner(TOKEN_SECRET).issue(DeviceClaims("dev-1", "cust-1", _token_id(redis_sync), time.time() - 5))
    other_secret = TokenSigner("another-secret-0123456789abcdef").issue(
        DeviceClaims("dev-1", "cust-1", _token_id(redis_sync), time.time() + 3600))
    cases = [
        (None, "missing"),
        ("Basic ZGV2OnB3", "Bearer <token>"),
        ("Bearer", "Bearer <token>"),
        ("Bearer    ", "Bearer <token>"),
        ("Bearer not-a-token", "unknown bearer token"),
        ("Bearer v1.onlytwo", "malformed"),
        ("Bearer v1.a.b.c", "malformed"),
        (f"Bearer v1.{payload}.{sig[:-3]}xyz", "signature"),
        (f"Bearer v1.{tampered_payload}.{sig}", "signature"),
        (f"Bearer {other_secret}", "signature"),
        (f"Bearer {expired}", "expired"),
    ]
    with unchanged():
        for header, words in cases:
            headers = {} if header is None else {"Authorization": header}
            r = client.post(LOC, headers=headers, json=batch(fix(45.0, 9.0)))
            assert_problem(r, 401, words)
            assert r.headers.get("www-authenticate") == "Bearer"
            assert_problem(client.get("/v1/stores/s1", headers=headers), 401, words)


def test_device_token_for_another_device(client, world, unchanged):
    register(client, "dev-2", "cust-2")
    with unchanged():
        assert_problem(client.post(LOC, headers=world, json=batch(fix(45.0, 9.0), device_id="dev-2")), 403,
                       "'dev-1'", "'dev-2'")
        assert_problem(client.get("/v1/customers/cust-2/consent", headers=world), 403, "own customer")
        assert_problem(client.put("/v1/customers/cust-2/consent", headers=world,
                                  json={"location": False, "marketing": False, "personalisation": False}),
                       403, "own customer")


def test_device_token_on_admin_endpoints(client, world, unchanged):
    fc = {"type": "FeatureCollection", "features": [circle_store("x1", 45.0, 9.0)]}
    with unchanged():
        for method, path, body in [("PUT", "/v1/stores/s1", circle_store("s1", 1.0, 1.0, 100)),
                                   ("PUT", "/v1/stores/s1", None),
                                   ("POST", "/v1/stores", fc),
                                   ("DELETE", "/v1/stores/s1", None),
                                   ("POST", "/v1/devices", {"device_id": "dev-9", "customer_id": "cust-1",
                                                            "platform": "ios", "push_token": "ab" * 32})]:
            r = client.request(method, path, headers=world, json=body)
            assert_problem(r, 403, "an API key with the role", "a device token may not call it")
    # and an admin token is not a device: it cannot report fixes
    with unchanged():
        assert_problem(client.post(LOC, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                   json=batch(fix(45.0, 9.0))), 403, "device token")


def test_old_token_after_re_registration(client, world, unchanged):
    new = register(client, "dev-1", "cust-1", consent=False)
    with unchanged():
        assert_problem(client.post(LOC, headers=world, json=batch(fix(45.0, 9.0))), 401, "replaced")
        assert_problem(client.get("/v1/customers/cust-1/consent", headers=world), 401, "replaced")
    assert client.post(LOC, headers=new, json=batch(fix(45.0, 9.0))).status_code == 200


# stores --------------------------------------------------------------------------------------------

def _polygon(ring) -> dict:
    return {"type": "Feature", "properties": {"name": "p"}, "geometry": {"type": "Polygon", "coordinates": [ring]}}


@pytest.mark.parametrize("feature,words", [
    (circle_store("s1", 45.0, 9.0, 5), "radius_m 5 is outside 10-10000"),
    (circle_store("s1", 45.0, 9.0, 10_001), "radius_m 10001 is outside"),
    (circle_store("s1", 45.0, 9.0, "50"), "radius_m must be a number"),
    ({"type": "Feature", "geometry": {"type": "Point", "coordinates": [9.0, 45.0]}, "properties": {}}, "needs properties.radius_m"),
    ({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[9.0, 45.0], [9.1, 45.1]]}}, "'LineString' is not supported"),
    ({"type": "Feature", "geometry": {"type": "Circle", "coordinates": [9.0, 45.0]}}, "'Circle' is not supported"),
    ({"type": "Feature", "geometry": None}, "no geometry"),
    ({"type": "Point", "coordinates": [9.0, 45.0]}, "\"type\": \"Feature\""),
    (_polygon([[9.0, 45.0], [9.001, 45.0], [9.001, 45.001], [9.0, 45.001]]), "closed ring"),
    (_polygon([[9.0, 45.0], [9.001, 45.0], [9.0, 45.0]]), "at least 4 positions"),
    (_polygon([[9.0, 45.0], [9.0, 45.0], [9.0, 45.0], [9.0, 45.0]]), "no area"),
    (_polygon([[9.0, 86.0], [9.001, 86.0], [9.001, 86.001], [9.0, 86.0]]), "latitude 86"),
    (_polygon([[9.0, 45.0], [9.5, 45.0], [9.5, 45.5], [9.0, 45.0]]), "km from its centre"),
    (circle_store("s1", 45.0, 9.0, 50, opening_hours="Mo-Fr 25:00-26:00"), "opening_hours"),
    (circle_store("s1", 45.0, 9.0, 50, timezone="Mars/Olympus"), "time zone"),
    (circle_store("s1", 45.0, 9.0, 50, dwell_s=-1), "dwell_s"),
])
def test_invalid_geojson_on_put(client, world, admin, unchanged, feature, words):
    before = client.get("/v1/stores/s1", headers=admin).json()
    with unchanged():
        assert_problem(client.put("/v1/stores/s1", headers=admin, json=feature), 422, words)
    assert client.get("/v1/stores/s1", headers=admin).json() == before


def test_self_intersecting_ring_is_repaired_with_a_warning(client, world, admin):
    bowtie = _polygon([[9.3, 45.3], [9.302, 45.302], [9.302, 45.3], [9.3, 45.302], [9.3, 45.3]])
    r = client.put("/v1/stores/bow", headers=admin, json=bowtie)
    assert r.status_code == 201, r.text
    body = r.json()
    assert any("self-intersection" in w.lower() and "repaired" in w for w in body["warnings"]), body
    assert body["geometry"]["type"] == "MultiPolygon" and len(body["geometry"]["coordinates"]) == 2
    stored = client.get("/v1/stores/bow", headers=admin).json()
    assert stored["geometry"] == body["geometry"] and "warnings" not in stored
    # the repaired fence works: a fix inside the left lobe enters it (and the device, so far
    # inside s1, leaves s1); the centre of the bow tie, outside both lobes, enters nothing
    r = client.post(LOC, headers=world, json=batch(fix(45.301, 9.3004, time.time() - 30)))
    assert [(e["type"], e["store_id"], e["exit_reason"]) for e in r.json()["events"]] == [
        ("enter", "bow", None), ("exit", "s1", "left")]
    r = client.post(LOC, headers=register(client, "dev-3", "cust-1"), json=batch(
        fix(45.3002, 9.301, time.time() - 20, accuracy_m=1), fix(45.3018, 9.301, time.time() - 10, accuracy_m=1),
        device_id="dev-3"))
    assert r.json()["events"] == [], r.text


def test_store_id_mismatch_between_path_and_body(client, world, admin, unchanged):
    with unchanged():
        assert_problem(client.put("/v1/stores/s1", headers=admin, json=circle_store("s2", 45.0, 9.0)), 422,
                       "'s2'", "'s1'")
        f = circle_store("s1", 45.0, 9.0)
        del f["id"]
        f["properties"]["store_id"] = "other"
        assert_problem(client.put("/v1/stores/s1", headers=admin, json=f), 422, "'other'", "does not match")
        assert_problem(client.put("/v1/stores/bad%20id", headers=admin, json=circle_store("bad id", 45.0, 9.0)), 422,
                       "store_id")


def test_bulk_imports_the_good_and_reports_each_bad_feature(client, world, admin, redis_sync):
    s1_before = client.get("/v1/stores/s1", headers=admin).json()
    features = [
        circle_store("n1", 44.0, 10.0, 60),                                  # 0 good, new
        circle_store("s1", 45.0, 9.0, 3),                                    # 1 bad radius, existing id
        "not a feature",                                                     # 2
        {"type": "Feature", "id": "n2", "geometry": {"type": "MultiPoint", "coordinates": [[1, 2]]}},  # 3
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.0, 44.0]},
         "properties": {"radius_m": 30}},                                    # 4 no id
        circle_store("p1", 45.1005, 9.1005, 80, name="now a circle"),        # 5 good, replaces p1
        _polygon([[9.0, 45.0], [9.001, 45.0], [9.001, 45.001], [9.0, 45.001]]) | {"id": "n3"},  # 6 unclosed
        circle_store("n4", 44.0, 200.0, 50),                                 # 7 longitude out of range
        circle_store("n5", 44.001, 10.001, 40),                              # 8 good, new
    ]
    r = client.post("/v1/stores", headers=admin, json={"type": "FeatureCollection", "features": features})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["updated"]) == (2, 1)
    rejected = {x["index"]: x for x in body["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4, 6, 7]
    assert rejected[1]["id"] == "s1" and "radius_m 3" in rejected[1]["reason"]
    assert "\"type\": \"Feature\"" in rejected[2]["reason"]
    assert rejected[3]["id"] == "n2" and "'MultiPoint' is not supported" in rejected[3]["reason"]
    assert "no id" in rejected[4]["reason"]
    assert rejected[6]["id"] == "n3" and "closed ring" in rejected[6]["reason"]
    assert rejected[7]["id"] == "n4" and "longitude 200" in rejected[7]["reason"]
    for sid in ("n1", "n5"):
        assert client.get(f"/v1/stores/{sid}", headers=admin).status_code == 200
    assert client.get("/v1/stores/p1", headers=admin).json()["properties"]["name"] == "now a circle"
    for sid in ("n2", "n3", "n4"):
        assert_problem(client.get(f"/v1/stores/{sid}", headers=admin), 404, sid)
    assert client.get("/v1/stores/s1", headers=admin).json() == s1_before
    assert redis_sync.hlen(STORES_FEATURES) == 4  # s1, p1, n1, n5
    near = client.get("/v1/stores", headers=admin, params={"lat": 44.0, "lon": 10.0, "radius_m": 500}).json()
    assert [s["store_id"] for s in near] == ["n1", "n5"]


@pytest.mark.parametrize("body,words", [
    (circle_store("s1", 45.0, 9.0), "FeatureCollection"),
    ([circle_store("s1", 45.0, 9.0)], "FeatureCollection"),
    ({"type": "FeatureCollection"}, "features must be a list"),
    ({"type": "FeatureCollection", "features": {"0": circle_store("s1", 45.0, 9.0)}}, "features must be a list"),
    ({"type": "GeometryCollection", "geometries": []}, "FeatureCollection"),
    ("FeatureCollection", "FeatureCollection"),
])
def test_bulk_with_a_non_feature_collection(client, world, admin, unchanged, body, words):
    with unchanged():
        assert_problem(client.post("/v1/stores", headers=admin, json=body), 422, words)


@pytest.mark.parametrize("params,words", [
    ({"lat": 91, "lon": 9}, "lat"),
    ({"lat": -90.5, "lon": 9}, "lat"),
    ({"lat": "north", "lon": 9}, "lat"),
    ({"lat": "NaN", "lon": 9}, "lat"),
    ({"lat": 45, "lon": "inf"}, "lon"),
    ({"lat": 45, "lon": 181}, "lon"),
    ({"lon": 9}, "lat"),
    ({"lat": 45, "lon": 9, "radius_m": 0}, "radius_m"),
    ({"lat": 45, "lon": 9, "radius_m": -5}, "radius_m"),
    ({"lat": 45, "lon": 9, "radius_m": 50_001}, "radius_m"),
    ({"lat": 45, "lon": 9, "limit": 0}, "limit"),
    ({"lat": 45, "lon": 9, "limit": 501}, "limit"),
])
def test_nearby_with_bad_query(client, world, admin, params, words):
    assert_problem(client.get("/v1/stores", headers=admin, params=params), 422, words)


def test_unknown_store_get_and_delete(client, world, admin, unchanged):
    with unchanged():
        assert_problem(client.get("/v1/stores/nope", headers=admin), 404, "'nope' does not exist")
        assert_problem(client.get("/v1/stores/nope", headers=world), 404, "'nope' does not exist")
        assert_problem(client.delete("/v1/stores/nope", headers=admin), 404, "'nope' does not exist")
        assert_problem(client.get("/v1/stores/-bad", headers=admin), 422, "store_id")


def test_unknown_route_and_method(client, world, admin):
    for path in ("/v1/nope", "/v2/locations", "/", "/v1/stores/s1/extra"):
        body = assert_problem(client.get(path, headers=admin), 404, "no route GET " + path)
        assert body["instance"] == path
    assert_problem(client.post("/v1/stores/s1", headers=admin, json={}), 405, "method not allowed")


# consent and devices -------------------------------------------------------------------------------

@pytest.mark.parametrize("body,words", [
    ({"location": True, "marketing": True}, "personalisation"),
    ({}, "location"),
    ({"location": True, "marketing": True, "personalisation": True, "profiling": True}, "profiling"),
    ({"location": "maybe", "marketing": True, "personalisation": True}, "location"),
    ([True, True, True], "valid dictionary"),
])
def test_consent_with_missing_or_extra_fields(client, world, admin, unchanged, body, words):
    with unchanged():
        assert_problem(client.put("/v1/customers/cust-1/consent", headers=admin, json=body), 422, words)
    assert client.get("/v1/customers/cust-1/consent", headers=admin).json()["location"] is True


@pytest.mark.parametrize("patch,words", [
    ({"platform": "symbian"}, "platform"),
    ({"timezone": "Mars/Olympus"}, "IANA time zone"),
    ({"timezone": "../../../etc/passwd"}, "IANA time zone"),
    ({"device_id": "bad id!"}, "device_id"),
    ({"customer_id": ""}, "customer_id"),
    ({"push_token": ""}, "push_token"),
    # per platform, and never anything that could leave its place in a provider's URL or body
    ({"push_token": "../../3/device/" + "ab" * 32}, "push_token"),
    ({"push_token": "ab" * 31}, "push_token"),            # APNs: 32 bytes at least
    ({"push_token": "a" * 65}, "push_token"),             # an odd number of hex digits
    ({"push_token": "ab" * 101}, "push_token"),           # more than 100 bytes
    ({"platform": "android", "push_token": "fcm token/with?query"}, "push_token"),
    ({"platform": "web", "push_token": "line\nbreak"}, "push_token"),
])
def test_device_registration_with_bad_fields(client, world, admin, unchanged, patch, words):
    body = {"device_id": "dev-1", "customer_id": "cust-1", "platform": "ios", "push_token": "ab" * 32, **patch}
    with unchanged():
        assert_problem(client.post("/v1/devices", headers=admin, json=body), 422, words)


# every protected route ------------------------------------------------------------------------------

PUBLIC = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


PLAUSIBLE = {
    "/v1/stores/{store_id}": circle_store("s1", 45.0, 9.0, 40),
    "/v1/stores": {"type": "FeatureCollection", "features": [circle_store("x9", 45.0, 9.0, 40)]},
    "/v1/locations": batch(fix(45.0, 9.0)),
    "/v1/devices": {"device_id": "dev-9", "customer_id": "cust-1", "platform": "ios", "push_token": "ab" * 32},
    "/v1/customers/{customer_id}/consent": {"location": False, "marketing": False, "personalisation": False},
}


def test_every_route_needs_a_token(client, world, unchanged):
    spec = client.get("/openapi.json").json()
    seen = []
    with unchanged():
        for path, ops in spec["paths"].items():
            if path in PUBLIC:
                continue
            concrete = path.replace("{store_id}", "s1").replace("{customer_id}", "cust-1")
            for method in ops:
                if method not in ("get", "put", "post", "delete", "patch"):
                    continue
                for kw in ({}, {"json": {}}, {"json": PLAUSIBLE.get(path, {})}):
                    r = client.request(method.upper(), concrete, **kw)
                    assert_problem(r, 401, "Authorization")
                seen.append(f"{method.upper()} {path}")
    assert len(seen) >= 8, seen
    assert {"PUT /v1/stores/{store_id}", "POST /v1/stores", "POST /v1/locations", "POST /v1/devices",
            "GET /v1/customers/{customer_id}/consent"} <= set(seen)
