"""Geo guards of issue 15, through the app on real Redis: a device flapping in and out of a
fence cannot flood its shard's event stream (the per-device transition cap); the visits of
phones that go silent end with an `exit`, reason `timeout` (the exit sweep); and the nearby
stores query is bounded and equal to the brute force."""
from __future__ import annotations

import asyncio
import random
import time

from fastapi.testclient import TestClient

from vicino.services.geo.adapters.device_repository import DeviceRepository
from vicino.services.geo.adapters.redis_keys import open_visits_key
from vicino.services.geo.app import create_app
from vicino.services.geo.domain.geojson_codec import store_from_feature
from vicino.services.geo.use_cases.exit_sweep import ExitSweep
from vicino.services.kernel.clock import FixedClock
from vicino.services.kernel.contracts.geofence_events import device_shard

from tests.conftest import circle_store, fix, make_settings, register
from tests.integration.test_bulk_and_metrics import metrics, sample
from tests.support import assert_problem, stream_events, wait_until

LOC = "/v1/locations"
STORE_LAT, STORE_LON = 45.4642, 9.1900
INSIDE = (45.464213, 9.190037)
FAR = (45.471717, 9.201313)  # ~1.2 km away


def _app(redis_url, clock, **overrides):
    return TestClient(create_app(make_settings(redis_url, **overrides), clock=clock), raise_server_exceptions=False)


def _post(client, headers, device_id, fixes):
    r = client.post(LOC, headers=headers, json={"device_id": device_id, "fixes": fixes})
    assert r.status_code == 200, r.text
    return r.json()


def _duomo(client, admin):
    r = client.put("/v1/stores/duomo", headers=admin, json=circle_store("duomo", STORE_LAT, STORE_LON, 60, dwell_s=60))
    assert r.status_code == 201, r.text


# --- the transition cap ---------------------------------------------------------------------------

def test_a_flapping_device_cannot_flood_the_stream_other_devices_share(redis_url, redis_sync, admin):
    # One stream for every device and the smallest length cap, so that a flood would trim it.
    clock = FixedClock(time.time())
    with _app(redis_url, clock, event_shards=1, events_maxlen=1000, max_transitions_per_min=30) as client:
        _duomo(client, admin)
        calm = register(client, "calm-phone", "cust-calm")
        flappy = register(client, "flappy-phone", "cust-flappy")
        t0 = clock.now() - 600
        entered = _post(client, calm, "calm-phone", [fix(*INSIDE, t0)])
        assert [e["type"] for e in entered["events"]] == ["enter"]

        total = n_capped = 0
        for req in range(4):  # 2,000 fixes, microseconds apart, alternating inside and 1.2 km away
            base = t0 + 1 + req * 0.01
            body = _post(client, flappy, "flappy-phone",
                         [fix(*(INSIDE if i % 2 == 0 else FAR), base + i * 1e-6) for i in range(500)])
            total += len(body["events"])
            n_capped += sum(1 for i in body["ignored"] if i["reason"] == "transition_rate")
            assert body["accepted"] + len(body["ignored"]) == 500

        # the other device's visit is untouched: its enter is still in the stream, and it goes on
        calm_events = stream_events(redis_sync, "calm-phone", shards=1)
        assert [e.type for e in calm_events] == ["enter"]
        assert total == 30  # the cap, for the minute of server time all four requests fell in
        assert len(stream_events(redis_sync, "flappy-phone", shards=1)) == 30
        dwell = _post(client, calm, "calm-phone", [fix(*INSIDE, t0 + 120)])
        assert [(e["type"], e["visit_id"]) for e in dwell["events"]] == [("dwell", entered["events"][0]["visit_id"])]

        m = metrics(client)
        assert sample(m, "vicino_geo_fixes_total", outcome="transition_rate") == n_capped >= 900
        schema = client.get("/openapi.json").json()["components"]["schemas"]["IgnoredFix"]
        assert "transition_rate" in schema["properties"]["reason"]["enum"]  # the documented reasons

        # a minute later the device has a fresh allowance (it is capped, not banned)
        clock.advance(60)
        back = _post(client, flappy, "flappy-phone", [fix(*INSIDE, t0 + 5), fix(*FAR, t0 + 6)])
        assert [e["type"] for e in back["events"]] == ["enter", "exit"]


# --- the exit sweep -------------------------------------------------------------------------------

def _open_visits(redis_sync, device_id, shards=16):
    return redis_sync.zscore(open_visits_key(device_shard(device_id, shards)), device_id)


def test_a_silent_phone_s_visit_ends_with_a_timeout_exit(redis_url, redis_sync, admin):
    clock = FixedClock(time.time())
    with _app(redis_url, clock, exit_timeout_s=900, exit_sweep_interval_s=0.05) as client:
        _duomo(client, admin)
        silent, active = register(client, "silent-phone", "cust-s"), register(client, "active-phone", "cust-a")
        t0 = clock.now() - 60
        visit = _post(client, silent, "silent-phone", [fix(*INSIDE, t0), fix(*INSIDE, t0 + 30)])["events"][0]
        _post(client, active, "active-phone", [fix(*INSIDE, t0)])
        assert _open_visits(redis_sync, "silent-phone") == t0 + 30
        clock.advance(700)
        _post(client, active, "active-phone", [fix(*INSIDE, t0 + 700)])  # still there, still reporting
        clock.advance(300)  # now t0 + 1060: 1030 s since the silent phone was last seen inside

        exits = wait_until(lambda: [e for e in stream_events(redis_sync, "silent-phone") if e.type == "exit"],
                           10.0, what="the sweep's exit")
        assert [(e.visit_id, e.exit_reason, e.dwell_s, e.ts, e.customer_id) for e in exits] == [
            (visit["visit_id"], "timeout", 30.0, t0 + 30 + 900, "cust-s")]
        assert exits[0].emitted_at == clock.now()
        assert _open_visits(redis_sync, "silent-phone") is None
        assert [e.type for e in stream_events(redis_sync, "active-phone")] == ["enter", "dwell"]
        assert _open_visits(redis_sync, "active-phone") == t0 + 700
        wait_until(lambda: sample(metrics(client), "vicino_geo_visits_timed_out_total") == 1, 5.0, what="the metric")

        # the phone reports again: a new visit, not the old one resumed
        back = _post(client, silent, "silent-phone", [fix(*INSIDE, t0 + 1050)])
        assert [e["type"] for e in back["events"]] == ["enter"] and back["events"][0]["visit_id"] != visit["visit_id"]
        # and once it leaves, the sorted set forgets it
        _post(client, silent, "silent-phone", [fix(*FAR, t0 + 1055)])
        assert _open_visits(redis_sync, "silent-phone") is None


def test_two_replicas_sweeping_at_once_end_a_visit_once(redis_url, redis_sync, admin):
    clock = FixedClock(time.time())
    with _app(redis_url, clock, exit_sweep_interval_s=3600) as client:  # the app's own sweep stays asleep
        _duomo(client, admin)
        phones = {f"phone-{i}": register(client, f"phone-{i}", f"cust-{i}") for i in range(6)}
        t0 = clock.now() - 10
        for device_id, headers in phones.items():
            _post(client, headers, device_id, [fix(*INSIDE, t0)])
        client.delete("/v1/devices/phone-5", headers=admin)  # its visit ends now, and its sweep entry goes
        assert _open_visits(redis_sync, "phone-5") is None
        clock.advance(client.app.state.container.settings.exit_timeout_s + 60)

        container = client.app.state.container

        async def both():
            other = ExitSweep(DeviceRepository(container.redis, container.settings.event_shards,
                                               container.settings.events_maxlen),
                              container.sweep.policy, clock, container.settings.device_state_ttl_s,
                              container.settings.event_shards)
            return await asyncio.gather(container.sweep.sweep_once(), other.sweep_once())

        mine, theirs = client.portal.call(both)
        assert len(mine) + len(theirs) == 5
        for device_id in list(phones)[:5]:
            events = stream_events(redis_sync, device_id)
            assert [(e.type, e.exit_reason) for e in events] == [("enter", None), ("exit", "timeout")], device_id
        assert [e.exit_reason for e in stream_events(redis_sync, "phone-5")] == [None, "device_removed"]
        assert client.portal.call(container.sweep.sweep_once) == []  # nothing left to end


# --- GET /v1/stores: bounded, and equal to the brute force --------------------------------------

def test_nearby_stores_are_bounded_and_equal_to_the_brute_force(client, admin):
    rng = random.Random(15)
    features = [circle_store(f"st-{i:04d}", STORE_LAT + rng.gauss(0, 0.15), STORE_LON + rng.gauss(0, 0.2),
                             rng.choice([30, 80, 200, 1000])) for i in range(2500)]
    r = client.post("/v1/stores", headers=admin, json={"type": "FeatureCollection", "features": features})
    assert r.status_code == 200 and r.json()["created"] == 2500, r.text[:300]
    stores = [store_from_feature(f)[0] for f in features]
    for q in range(6):
        lat, lon = STORE_LAT + rng.uniform(-0.2, 0.2), STORE_LON + rng.uniform(-0.2, 0.2)
        for radius, limit in ((500, 50), (50_000, 20), (50_000, 500)):
            got = client.get("/v1/stores", headers=admin, params={"lat": lat, "lon": lon, "radius_m": radius,
                                                                   "limit": limit})
            assert got.status_code == 200, got.text[:300]
            brute = sorted(((max(0.0, s.fence.distance_outside_m(lat, lon)), s.store_id) for s in stores))
            brute = [(sid, round(d, 2)) for d, sid in brute if d <= radius][:limit]
            assert [(s["store_id"], s["distance_m"]) for s in got.json()] == brute
    for params, word in (({"radius_m": 50_001}, "radius_m"), ({"radius_m": 1e9}, "radius_m"), ({"limit": 501}, "limit")):
        r = client.get("/v1/stores", headers=admin, params={"lat": STORE_LAT, "lon": STORE_LON, **params})
        assert_problem(r, 422, word)
