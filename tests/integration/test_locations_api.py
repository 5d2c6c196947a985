"""Locations end to end through the app on real Redis: visits, the geofence event stream,
consent (and its withdrawal), token rotation, ordering of fixes, and what is kept per device."""
from __future__ import annotations

import json
import time

import orjson
import pytest

from vicino.services.geo.adapters.redis_keys import DeviceKeys
from vicino.services.kernel.times import parse_instant, rfc3339
from vicino.services.kernel.contracts.geofence_events import (SCHEMA, SCHEMA_VERSION, GeofenceEventV1, device_shard,
                                                       events_stream_key)
from tests.conftest import circle_store, fix, register

from tests.support import assert_problem, epoch, epochs, redis_dump, stream_events

LOC = "/v1/locations"
# A store at Milano Duomo, and fixes with distinctive digits, so that any copy of a fix's
# coordinates kept by the service would be recognisable.
STORE_LAT, STORE_LON = 45.4642, 9.1900
INSIDE = [(45.464213, 9.190037), (45.464187, 9.189968), (45.464241, 9.190052)]
FAR = (45.471717, 9.201313)  # ~1.2 km away


def _post(client, headers, device_id, *fixes):
    r = client.post(LOC, headers=headers, json={"device_id": device_id, "fixes": list(fixes)})
    assert r.status_code == 200, r.text
    return r.json()


def _duomo(client, admin, dwell_s=60):
    r = client.put("/v1/stores/duomo", headers=admin, json=circle_store("duomo", STORE_LAT, STORE_LON, 60,
                                                                          dwell_s=dwell_s, brand="demo"))
    assert r.status_code == 201, r.text


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)


def test_enter_dwell_exit_are_returned_and_appended_to_the_event_stream(client, admin, redis_sync):
    _duomo(client, admin)
    dev = register(client, "phone-a", "cust-42")
    t0 = time.time() - 900
    fixes = [fix(*INSIDE[0], t0), fix(*INSIDE[1], t0 + 30), fix(*INSIDE[2], t0 + 75), fix(*FAR, t0 + 140)]
    body = _post(client, dev, "phone-a", *fixes)
    assert body["location_consent"] is True and "detail" not in body
    assert body["accepted"] == 4 and body["ignored"] == []
    events = body["events"]
    assert [e["type"] for e in events] == ["enter", "dwell", "exit"]
    assert epochs(e["ts"] for e in events) == pytest.approx([t0, t0 + 75, t0 + 140], abs=1e-3)  # RFC 3339, to the ms
    assert events[1]["dwell_s"] == 75 and events[2]["dwell_s"] == 140 and events[2]["exit_reason"] == "left"
    visit_id = events[0]["visit_id"]
    assert visit_id.startswith("vis_") and {e["visit_id"] for e in events} == {visit_id}

    key = events_stream_key(device_shard("phone-a", 16))
    entries = redis_sync.xrange(key)
    assert len(entries) == 3
    streamed = []
    for _id, fields in entries:
        assert fields[b"v"] == str(SCHEMA_VERSION).encode()
        raw = orjson.loads(fields[b"event"])
        assert raw["schema"] == SCHEMA == "vicino.geofence_event" and raw["version"] == 1
        assert set(raw) == {"schema", "version", "event_id", "type", "device_id", "customer_id", "store_id",
                            "visit_id", "ts", "emitted_at", "dwell_s", "exit_reason"}
        # no coordinates: no such field, and no number that is a fix's (or the store's) lat/lon
        for n in _numbers(raw):
            assert all(abs(n - c) > 1e-3 for pt in INSIDE + [FAR, (STORE_LAT, STORE_LON)] for c in pt), raw
        ev = GeofenceEventV1.from_stream_fields(fields)
        assert ev.customer_id == "cust-42" and ev.device_id == "phone-a" and ev.store_id == "duomo"
        assert ev.emitted_at >= t0 + 140
        streamed.append(ev)
    assert len({e.event_id for e in streamed}) == 3
    assert [(e.type, e.visit_id, rfc3339(e.ts), e.dwell_s, e.exit_reason) for e in streamed] == \
           [(e["type"], e["visit_id"], e["ts"], e["dwell_s"], e["exit_reason"]) for e in events]
    assert all(isinstance(e.ts, float) for e in streamed)  # the stream keeps epoch seconds
    # the other shards hold nothing
    for shard in range(16):
        if shard != device_shard("phone-a", 16):
            assert redis_sync.xlen(events_stream_key(shard)) == 0


def test_without_location_consent_nothing_is_processed_or_stored(client, admin, redis_sync):
    _duomo(client, admin)
    dev = register(client, "phone-b", "cust-b", consent=False)
    before = redis_dump(redis_sync)
    t0 = time.time() - 300
    body = _post(client, dev, "phone-b", fix(*INSIDE[0], t0), fix(*INSIDE[1], t0 + 100))
    assert body["location_consent"] is False
    assert "consented" in body["detail"] and "nothing was processed or stored" in body["detail"]
    assert body["accepted"] == 0 and body["events"] == []
    assert body["ignored"] == [{"index": 0, "reason": "no_location_consent"}, {"index": 1, "reason": "no_location_consent"}]
    assert redis_dump(redis_sync) == before
    assert not redis_sync.exists(DeviceKeys("phone-b", 16).state)
    assert stream_events(redis_sync, "phone-b") == []

    # consent for marketing only is still no location consent
    r = client.put("/v1/customers/cust-b/consent", headers=admin,
                   json={"location": False, "marketing": True, "personalisation": True})
    assert r.status_code == 200 and r.json()["location"] is False
    assert _post(client, dev, "phone-b", fix(*INSIDE[0], t0 + 120))["location_consent"] is False
    assert not redis_sync.exists(DeviceKeys("phone-b", 16).state)
    assert stream_events(redis_sync, "phone-b") == []

    # once given (by the device itself, for its own customer), the next fixes count
    r = client.put("/v1/customers/cust-b/consent", headers=dev,
                   json={"location": True, "marketing": False, "personalisation": False})
    assert r.status_code == 200, r.text
    body = _post(client, dev, "phone-b", fix(*INSIDE[0], t0 + 130))
    assert body["location_consent"] is True and [e["type"] for e in body["events"]] == ["enter"]
    assert [e.type for e in stream_events(redis_sync, "phone-b")] == ["enter"]

    # a device registered after its customer consented starts with consent
    late = register(client, "phone-b2", "cust-b", consent=False)
    assert _post(client, late, "phone-b2", fix(*INSIDE[0], t0 + 140))["location_consent"] is True


def test_withdrawing_consent_inside_a_store_exits_and_forgets(client, admin, redis_sync):
    _duomo(client, admin, dwell_s=600)
    dev1 = register(client, "phone-c1", "cust-c")
    dev2 = register(client, "phone-c2", "cust-c", consent=False)
    t0 = time.time() - 200
    v1 = _post(client, dev1, "phone-c1", fix(*INSIDE[0], t0), fix(*INSIDE[1], t0 + 40))["events"][0]["visit_id"]
    v2 = _post(client, dev2, "phone-c2", fix(*INSIDE[2], t0 + 10))["events"][0]["visit_id"]
    for d in ("phone-c1", "phone-c2"):
        assert redis_sync.exists(DeviceKeys(d, 16).state)

    withdrawn_at = time.time()
    r = client.put("/v1/customers/cust-c/consent", headers=dev1,
                   json={"location": False, "marketing": True, "personalisation": True})
    assert r.status_code == 200, r.text
    assert r.json()["location"] is False
    for d, visit, dwell in (("phone-c1", v1, 40), ("phone-c2", v2, 0)):
        assert not redis_sync.exists(DeviceKeys(d, 16).state), d
        evs = stream_events(redis_sync, d)
        assert [e.type for e in evs] == ["enter", "exit"]
        ex = evs[-1]
        assert ex.exit_reason == "consent_withdrawn" and ex.visit_id == visit and ex.customer_id == "cust-c"
        assert ex.dwell_s == dwell and ex.ts >= withdrawn_at - 1

    # later fixes are not processed, and still nothing is kept
    body = _post(client, dev1, "phone-c1", fix(*INSIDE[0], t0 + 100))
    assert body["location_consent"] is False and body["events"] == []
    assert not redis_sync.exists(DeviceKeys("phone-c1", 16).state)

    # consent again: a fresh visit, not the forgotten one
    client.put("/v1/customers/cust-c/consent", headers=admin,
               json={"location": True, "marketing": True, "personalisation": True}).raise_for_status()
    body = _post(client, dev1, "phone-c1", fix(*INSIDE[0], t0 + 110))
    assert [e["type"] for e in body["events"]] == ["enter"] and body["events"][0]["visit_id"] != v1


def test_consent_audit_trail(client, admin):
    dev = register(client, "phone-d", "cust-d", consent=False)
    r = client.get("/v1/customers/cust-d/consent", headers=admin)
    assert r.status_code == 200
    assert r.json() == {"customer_id": "cust-d", "location": False, "marketing": False, "personalisation": False,
                        "updated_at": None, "history": []}
    steps = [(admin, {"location": True, "marketing": False, "personalisation": False}),
             (dev, {"location": True, "marketing": True, "personalisation": False}),
             (admin, {"location": False, "marketing": True, "personalisation": True})]
    started = time.time()
    for headers, values in steps:
        r = client.put("/v1/customers/cust-d/consent", headers=headers, json=values)
        assert r.status_code == 200 and r.json() == {"customer_id": "cust-d", **values, "updated_at": r.json()["updated_at"]}
        assert started - 1 <= epoch(r.json()["updated_at"]) <= time.time()
    r = client.get("/v1/customers/cust-d/consent", headers=dev)  # the customer's own device may read it
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["location"], body["marketing"], body["personalisation"]) == (False, True, True)
    history = body["history"]
    assert len(history) == 3
    assert [h["by"] for h in history] == ["admin", "device:phone-d", "admin"]  # newest first
    for h, (_, values) in zip(history, reversed(steps)):
        assert {k: h[k] for k in values} == values
    ats = epochs(h["at"] for h in history)
    assert ats == sorted(ats, reverse=True) and started - 1 <= ats[-1] <= ats[0] <= time.time()
    assert body["updated_at"] == history[0]["at"]


def test_re_registering_rotates_the_token(client, admin, redis_sync):
    _duomo(client, admin)
    device = {"device_id": "phone-e", "customer_id": "cust-e", "platform": "ios", "push_token": "a1" * 32}
    r1 = client.post("/v1/devices", headers=admin, json=device)
    assert r1.status_code == 201 and r1.json()["rotated"] is False
    assert r1.json()["token_expires_at"].endswith("Z")  # RFC 3339, UTC
    assert abs(parse_instant(r1.json()["token_expires_at"]) - (time.time() + 30 * 86_400)) < 60
    client.put("/v1/customers/cust-e/consent", headers=admin,
               json={"location": True, "marketing": True, "personalisation": True}).raise_for_status()
    old = {"Authorization": f"Bearer {r1.json()['token']}"}
    t0 = time.time() - 100
    visit = _post(client, old, "phone-e", fix(*INSIDE[0], t0))["events"][0]["visit_id"]

    r2 = client.post("/v1/devices", headers=admin, json={**device, "push_token": "a2" * 32})
    assert r2.status_code == 201, r2.text
    assert r2.json()["rotated"] is True and r2.json()["token"] != r1.json()["token"]
    new = {"Authorization": f"Bearer {r2.json()['token']}"}
    assert redis_sync.hget(DeviceKeys("phone-e", 16).registration, "push_token") == b"a2" * 32

    assert_problem(client.post(LOC, headers=old, json={"device_id": "phone-e", "fixes": [fix(*INSIDE[1], t0 + 10)]}),
                   401, "replaced")
    assert_problem(client.put("/v1/customers/cust-e/consent", headers=old,
                              json={"location": False, "marketing": False, "personalisation": False}), 401, "replaced")
    # the new token works, and the same customer's open visit goes on (no second enter)
    body = _post(client, new, "phone-e", fix(*INSIDE[1], t0 + 10), fix(*FAR, t0 + 20))
    assert [(e["type"], e["visit_id"]) for e in body["events"]] == [("exit", visit)]
    assert client.get("/v1/customers/cust-e/consent", headers=new).status_code == 200

    # the phone changes hands: nothing of the old owner's visit continues under the new one
    _post(client, new, "phone-e", fix(*INSIDE[0], t0 + 30))
    r3 = client.post("/v1/devices", headers=admin, json={**device, "customer_id": "cust-f"})
    assert r3.json()["rotated"] is True
    assert not redis_sync.exists(DeviceKeys("phone-e", 16).state)
    closed = stream_events(redis_sync, "phone-e")[-1]  # the old owner's visit is closed, under the old owner
    assert (closed.type, closed.customer_id, closed.exit_reason) == ("exit", "cust-e", "device_reassigned")
    client.put("/v1/customers/cust-f/consent", headers=admin,
               json={"location": True, "marketing": True, "personalisation": True}).raise_for_status()
    body = _post(client, {"Authorization": f"Bearer {r3.json()['token']}"}, "phone-e", fix(*INSIDE[1], t0 + 40))
    assert [e["type"] for e in body["events"]] == ["enter"]
    assert stream_events(redis_sync, "phone-e")[-1].customer_id == "cust-f"


def test_duplicates_and_out_of_order_fixes_across_requests(client, admin, redis_sync):
    _duomo(client, admin, dwell_s=600)
    dev = register(client, "phone-g", "cust-g")
    t0 = time.time() - 500
    first = _post(client, dev, "phone-g", fix(*INSIDE[0], t0 + 10), fix(*INSIDE[1], t0 + 20))
    assert first["accepted"] == 2 and first["ignored"] == [] and [e["type"] for e in first["events"]] == ["enter"]
    second = _post(client, dev, "phone-g",
                   fix(*INSIDE[0], t0 + 20),                  # 0 same time as the last processed
                   fix(*FAR, t0 + 15),                        # 1 older than the last processed
                   fix(*INSIDE[2], t0 + 30),                  # 2 new
                   fix(*FAR, t0 + 30),                        # 3 same time as #2 (client order wins)
                   fix(*FAR, t0 + 40, accuracy_m=500),        # 4 too inaccurate to move anything
                   fix(*INSIDE[1], t0 + 5))                   # 5 older still
    assert second["accepted"] == 1
    assert second["ignored"] == [{"index": 0, "reason": "duplicate"}, {"index": 1, "reason": "out_of_order"},
                                 {"index": 3, "reason": "duplicate"}, {"index": 4, "reason": "low_accuracy"},
                                 {"index": 5, "reason": "out_of_order"}]
    assert second["events"] == []  # neither the far fixes (ignored) nor a second enter
    # the same batch again: every fix is now old news
    again = _post(client, dev, "phone-g", fix(*INSIDE[2], t0 + 40), fix(*INSIDE[0], t0 + 25))
    assert again["accepted"] == 0 and [i["reason"] for i in again["ignored"]] == ["duplicate", "out_of_order"]
    assert [e.type for e in stream_events(redis_sync, "phone-g")] == ["enter"]
    state = orjson.loads(redis_sync.hget(DeviceKeys("phone-g", 16).state, "s"))
    assert state["t"] == t0 + 40  # the inaccurate fix still advanced the clock


def test_device_state_has_a_ttl_and_no_coordinates(client, admin, redis_sync):
    _duomo(client, admin)
    dev = register(client, "phone-h", "cust-h")
    t0 = time.time() - 400
    fixes = [fix(*INSIDE[0], t0), fix(*INSIDE[1], t0 + 20), fix(45.463871, 9.187719, t0 + 45)]
    _post(client, dev, "phone-h", *fixes)
    key = DeviceKeys("phone-h", 16).state
    ttl_ms = redis_sync.pttl(key)
    assert 86_400_000 - 60_000 < ttl_ms <= 86_400_000
    stored = redis_sync.hgetall(key)
    assert set(stored) == {b"r", b"s"}
    state = orjson.loads(stored[b"s"])
    coords = [c for f in fixes for c in (f["lat"], f["lon"])]
    for n in _numbers(state):
        assert all(abs(n - c) > 1e-2 for c in coords), (n, state)
    assert "lat" not in stored[b"s"].decode() and "lon" not in stored[b"s"].decode()
    # and no key anywhere in Redis holds a fix's coordinates as text
    dump = repr(redis_dump(redis_sync))
    for f in fixes:
        for c in (f["lat"], f["lon"]):
            assert repr(c)[:8] not in dump, c  # e.g. "45.46421": not the store's "45.4642"
    # each saved report renews the TTL
    redis_sync.pexpire(key, 5_000)
    _post(client, dev, "phone-h", fix(*INSIDE[2], t0 + 60))
    assert redis_sync.pttl(key) > 86_000_000


def test_state_ttl_follows_the_setting(redis_url, redis_sync):
    from fastapi.testclient import TestClient

    from vicino.services.geo.app import create_app
    from tests.conftest import ADMIN_TOKEN, make_settings

    with TestClient(create_app(make_settings(redis_url, device_state_ttl_s=90)), raise_server_exceptions=False) as c:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        _duomo(c, admin)
        dev = register(c, "phone-i", "cust-i")
        _post(c, dev, "phone-i", fix(*INSIDE[0], time.time() - 10))
        assert 80_000 < redis_sync.pttl(DeviceKeys("phone-i", 16).state) <= 90_000
        assert json.loads(redis_sync.hget(DeviceKeys("phone-i", 16).state, "s"))["v"]["duomo"]


def test_unregistering_a_device_ends_its_visit_and_revokes_its_tokens(client, admin, redis_sync):
    _duomo(client, admin)
    dev = register(client, "lost-phone", "cust-lost")
    t0 = time.time() - 100
    visit = _post(client, dev, "lost-phone", fix(*INSIDE[0], t0))["events"][0]["visit_id"]
    mine = client.get("/v1/devices/lost-phone", headers=dev)
    assert mine.status_code == 200 and mine.json()["customer_id"] == "cust-lost" and "token" not in mine.json()
    assert_problem(client.get("/v1/devices/other-phone", headers=dev), 403, "own")

    assert_problem(client.delete("/v1/devices/other-phone", headers=dev), 403, "only for its own device")
    assert client.delete("/v1/devices/lost-phone", headers=admin).status_code == 204
    last = stream_events(redis_sync, "lost-phone")[-1]
    assert (last.type, last.visit_id, last.exit_reason) == ("exit", visit, "device_removed")
    assert not redis_sync.exists(DeviceKeys("lost-phone", 16).state)
    assert not redis_sync.exists(DeviceKeys("lost-phone", 16).registration)
    assert not redis_sync.sismember("vicino:{cust:cust-lost}:devices", "lost-phone")
    assert_problem(client.post(LOC, headers=dev, json={"device_id": "lost-phone", "fixes": [fix(*INSIDE[1], t0 + 5)]}),
                   401, "revoked", code="token_revoked")
    assert_problem(client.get("/v1/devices/lost-phone", headers=admin), 404, "not registered")
    assert_problem(client.delete("/v1/devices/lost-phone", headers=admin), 404, "not registered")


def test_store_reads_refuse_device_tokens_revoked_by_a_new_registration_or_a_removal(client, admin):
    _duomo(client, admin)
    near = {"lat": INSIDE[0][0], "lon": INSIDE[0][1]}
    old = register(client, "shop-phone", "cust-shop")
    assert client.get("/v1/stores", headers=old, params=near).status_code == 200
    assert client.get("/v1/stores/duomo", headers=old).status_code == 200
    new = register(client, "shop-phone", "cust-other", consent=False)  # the phone changed hands
    for revoked in (lambda h: client.get("/v1/stores", headers=h, params=near),
                    lambda h: client.get("/v1/stores/duomo", headers=h)):
        assert_problem(revoked(old), 401, "revoked")
        assert revoked(new).status_code == 200
    assert client.delete("/v1/devices/shop-phone", headers=admin).status_code == 204
    assert_problem(client.get("/v1/stores", headers=new, params=near), 401, "revoked")
    assert_problem(client.get("/v1/stores/duomo", headers=new), 401, "revoked")
    assert client.get("/v1/stores/duomo", headers=admin).status_code == 200  # keys are not device tokens


def test_a_consent_change_racing_an_unregistration_leaves_no_stub_registration(client, admin, redis_sync):
    register(client, "gone-phone", "cust-gone")
    # the device is still in its customer's set, but its registration is already gone (a DELETE
    # that ran between the consent change reading the set and updating the devices)
    redis_sync.delete(DeviceKeys("gone-phone", 16).registration)
    r = client.put("/v1/customers/cust-gone/consent", headers=admin,
                   json={"location": False, "marketing": False, "personalisation": False})
    assert r.status_code == 200, r.text
    assert not redis_sync.exists(DeviceKeys("gone-phone", 16).registration)


def test_consent_changes_recorded_before_the_list_are_still_shown_after_it(client, admin, redis_sync):
    """Deployments from before the audit list kept the trail in a stream (~4.7 KB per customer
    for one change): it is read after the list, never written again."""
    from vicino.services.kernel.contracts.customer_state import consent_audit_key, consent_log_key

    register(client, "phone-l", "cust-l", consent=False)
    redis_sync.xadd(consent_audit_key("cust-l"), {"location": "1", "marketing": "0", "personalisation": "0",
                                                  "at": repr(1_700_000_000.0), "by": "admin"})
    client.put("/v1/customers/cust-l/consent", headers=admin,
               json={"location": False, "marketing": False, "personalisation": False}).raise_for_status()
    history = client.get("/v1/customers/cust-l/consent", headers=admin).json()["history"]
    assert [(h["location"], h["at"] == "2023-11-14T22:13:20.000Z") for h in history] == [(False, False), (True, True)]
    assert redis_sync.type(consent_log_key("cust-l")) == b"list"
    assert redis_sync.xlen(consent_audit_key("cust-l")) == 1  # not written to any more
