"""Two guards on the geofence event streams, through the app on real Redis: a device flapping
in and out of a fence cannot flood its shard's stream (the per-device transition cap), and the
visits of phones that go silent end with an `exit`, reason `timeout` (the exit sweep)."""
from __future__ import annotations

import asyncio
import time

from fastapi.testclient import TestClient

from vicino.services.geo.adapters.device_repository import DeviceRepository
from vicino.services.geo.adapters.redis_keys import open_visits_key
from vicino.services.geo.app import create_app
from vicino.services.geo.use_cases.exit_sweep import ExitSweep
from vicino.services.kernel.clock import FixedClock
from vicino.services.kernel.contracts.geofence_events import device_shard

from tests.conftest import circle_store, fix, make_settings, register
from tests.integration.test_bulk_and_metrics import metrics, sample
from tests.support import stream_events, wait_until

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
            capped = [i for i in body["ignored"] if i["reason"] == "transition_rate"]
            assert capped, body["ignored"][:3]
            n_capped += len(capped)
            assert body["accepted"] + len(body["ignored"]) == 500
        assert total == 30  # the cap, for the minute of server time all four requests fell in
        assert len(stream_events(redis_sync, "flappy-phone", shards=1)) == 30

        # the other device's visit is untouched: its enter is still in the stream, and it goes on
        calm_events = stream_events(redis_sync, "calm-phone", shards=1)
        assert [e.type for e in calm_events] == ["enter"]
        dwell = _post(client, calm, "calm-phone", [fix(*INSIDE, t0 + 120)])
        assert [(e["type"], e["visit_id"]) for e in dwell["events"]] == [("dwell", entered["events"][0]["visit_id"])]

        m = metrics(client)
        assert sample(m, "vicino_geo_fixes_total", outcome="transition_rate") == n_capped >= 900

        # a minute later the device has a fresh allowance (it is capped, not banned)
        clock.advance(60)
        back = _post(client, flappy, "flappy-phone", [fix(*INSIDE, t0 + 5), fix(*FAR, t0 + 6)])
        assert [e["type"] for e in back["events"]] == ["enter", "exit"]
