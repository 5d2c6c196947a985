"""Concurrency: many simultaneous reports for one device make one enter; two replicas on one
Redis share the store catalogue (through the change log) and the device's visit state."""
from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from vicino.services.geo.adapters.redis_keys import DeviceKeys
from vicino.services.geo.app import create_app
from tests.conftest import ADMIN_TOKEN, circle_store, fix, make_settings, register

from tests.support import served_geo, stream_events, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LAT, LON = 45.4642, 9.19


def run_together(n: int, work) -> list:
    """Runs work(i) in n threads released at once; returns the results (re-raises any error)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def target(i):
        try:
            barrier.wait(10)
            results[i] = work(i)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    return results


def post_until_done(post, body: dict, attempts: int = 20) -> dict:
    """What a phone does: a 409 says "retry", anything else is final."""
    for _ in range(attempts):
        r = post(body)
        if r.status_code != 409:
            assert r.status_code == 200, r.text
            return {**r.json(), "conflicts": _}
        assert r.headers["content-type"] == "application/problem+json" and "retry" in r.json()["detail"]
    raise AssertionError("still 409 after retries")


@pytest.fixture(params=[0, 50_000], ids=["no-device-cache", "device-cache"])
def geo_server(request, redis_url, tmp_path):
    """Two uvicorn workers, with and without the replica's cache of recent device snapshots."""
    with served_geo(redis_url, tmp_path, workers=2, env={"VICINO_DEVICE_CACHE_SIZE": str(request.param)}) as url:
        yield url, request.param


def test_concurrent_reports_for_one_device_make_one_enter(geo_server, redis_sync):
    geo_server, cache_size = geo_server
    with httpx.Client(base_url=geo_server, timeout=30) as http:
        assert http.put("/v1/stores/duomo", headers=ADMIN, json=circle_store("duomo", LAT, LON, 80,
                                                                                           dwell_s=86_400)).status_code == 201
        dev = register(http, "busy-phone", "cust-1")
    t0 = time.time() - 600
    n, rounds = 20, 3
    with httpx.Client(base_url=geo_server, headers=dev, timeout=30,
                      limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)) as http:
        start = time.perf_counter()
        stamps: list[float] = []

        def work(i):
            out = []
            for k in range(rounds):
                # every fix is inside the fence and stamped when sent: most requests carry news,
                # so most of them race to save the device's state
                sent = t0 + (time.perf_counter() - start) * 100
                fixes = [fix(LAT + 0.0001 * (i % 5), LON, sent + j / 10_000) for j in range(3)]
                stamps.extend(f["ts"] for f in fixes)
                out.append(post_until_done(lambda b: http.post("/v1/locations", json=b),
                                           {"device_id": "busy-phone", "fixes": fixes}))
            return out

        redis_sync.config_resetstat()
        responses = [r for batch in run_together(n, work) for r in batch]
        evalsha = redis_sync.info("commandstats")["cmdstat_evalsha"]

    assert len(responses) == n * rounds
    types = Counter(e["type"] for r in responses for e in r["events"])
    assert types == {"enter": 1}, types
    assert sum(r["accepted"] + len(r["ignored"]) for r in responses) == n * rounds * 3
    assert all(i["reason"] in ("out_of_order", "duplicate") for r in responses for i in r["ignored"])
    events = stream_events(redis_sync, "busy-phone")
    assert [(e.type, e.store_id) for e in events] == [("enter", "duomo")]
    assert events[0].visit_id == next(e["visit_id"] for r in responses for e in r["events"])
    # no lost update: every request that accepted a fix saved exactly once, on the newest state
    state = redis_sync.hgetall(DeviceKeys("busy-phone", 16).state)
    assert int(state[b"r"]) == sum(1 for r in responses if r["accepted"])
    assert orjson.loads(state[b"s"])["t"] == max(stamps)
    # and the race really happened: a lost compare-and-set costs one more save attempt (the
    # refused save hands back the current state, no re-read). Without the cache every request
    # also reads once, so the count of lost races is exact.
    saves = int(state[b"r"])
    calls = evalsha["calls"] - evalsha.get("failed_calls", 0)  # NOSCRIPT answers, then loaded and retried
    calls -= len(responses) + sum(r["conflicts"] for r in responses)  # each request's rate limit check
    if cache_size == 0:
        lost = calls - len(responses) - saves
        assert lost >= 1, (evalsha, saves)
    else:
        assert calls > saves, (evalsha, saves)


@pytest.fixture
def replicas(redis_url):
    """Two app instances (two replicas) on one Redis."""
    settings = make_settings(redis_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as a, \
            TestClient(create_app(settings), raise_server_exceptions=False) as b:
        yield a, b


def _near(client, lat=LAT, lon=LON, radius_m=200) -> list[str]:
    r = client.get("/v1/stores", headers=ADMIN, params={"lat": lat, "lon": lon, "radius_m": radius_m})
    assert r.status_code == 200, r.text
    return [s["store_id"] for s in r.json()]


def test_a_store_written_on_one_replica_reaches_the_other(replicas):
    a, b = replicas
    assert _near(a) == _near(b) == []
    assert a.put("/v1/stores/duomo", headers=ADMIN, json=circle_store("duomo", LAT, LON, 80)).status_code == 201
    assert _near(a) == ["duomo"]  # read-your-writes on the writer
    wait_until(lambda: _near(b) == ["duomo"], 3, what="replica B sees the PUT")

    # a replace moves the fence; B follows
    assert a.put("/v1/stores/duomo", headers=ADMIN, json=circle_store("duomo", 45.47, 9.20, 80)).status_code == 200
    wait_until(lambda: _near(b) == [] and _near(b, 45.47, 9.20) == ["duomo"], 3, what="replica B sees the move")

    # a bulk import on B reaches A
    fc = {"type": "FeatureCollection", "features": [circle_store(f"s{i}", LAT + i * 0.0005, LON, 30) for i in range(5)]}
    assert b.post("/v1/stores", headers=ADMIN, json=fc).json()["created"] == 5
    wait_until(lambda: len(_near(a, radius_m=400)) == 5, 3, what="replica A sees the bulk import")

    # deletes, both ways
    assert a.delete("/v1/stores/duomo", headers=ADMIN).status_code == 204
    assert b.delete("/v1/stores/s0", headers=ADMIN).status_code == 204
    wait_until(lambda: _near(b, 45.47, 9.20) == [], 3, what="replica B sees the DELETE")
    wait_until(lambda: "s0" not in _near(a, radius_m=400), 3, what="replica A sees the DELETE")
    assert sorted(_near(a, radius_m=400)) == sorted(_near(b, radius_m=400)) == ["s1", "s2", "s3", "s4"]

    # a fix reported to B uses the store written on A
    assert a.put("/v1/stores/new", headers=ADMIN, json=circle_store("new", 45.5, 9.3, 50)).status_code == 201
    dev = register(a, "roamer", "cust-r")
    wait_until(lambda: "new" in _near(b, 45.5, 9.3), 3, what="replica B sees the new store")
    r = b.post("/v1/locations", headers=dev, json={"device_id": "roamer", "fixes": [fix(45.5, 9.3, time.time() - 5)]})
    assert [(e["type"], e["store_id"]) for e in r.json()["events"]] == [("enter", "new")]


def test_two_replicas_reporting_for_one_device_never_make_two_enters(replicas, redis_sync):
    a, b = replicas
    assert a.put("/v1/stores/duomo", headers=ADMIN, json=circle_store("duomo", LAT, LON, 80)).status_code == 201
    wait_until(lambda: _near(b) == ["duomo"], 3, what="replica B sees the store")
    dev = register(b, "twin-phone", "cust-t")
    t0 = time.time() - 3000
    n = 16
    visits = []
    # three visits: inside, then far away, then inside again; each phase raced across replicas
    for phase, (lat, lon) in enumerate([(LAT, LON), (45.48, 9.22), (LAT, LON + 0.0002)]):
        def work(i, phase=phase, lat=lat, lon=lon):
            replica = a if i % 2 else b
            return post_until_done(lambda body: replica.post("/v1/locations", headers=dev, json=body),
                                   {"device_id": "twin-phone", "fixes": [fix(lat, lon, t0 + phase * 1000 + i)]})

        responses = run_together(n, work)
        types = Counter(e["type"] for r in responses for e in r["events"])
        assert types == [{"enter": 1}, {"exit": 1}, {"enter": 1}][phase], (phase, types)
        visits += [e["visit_id"] for r in responses for e in r["events"]]
    events = stream_events(redis_sync, "twin-phone")
    assert [e.type for e in events] == ["enter", "exit", "enter"]
    assert [e.visit_id for e in events] == visits and visits[0] == visits[1] != visits[2]


def _race(first, second) -> dict:
    """Runs two calls released at the same instant; returns their results by name."""
    out: dict = {}
    run_together(2, lambda i: out.__setitem__(i, (first, second)[i]()))
    return out


def test_consent_withdrawn_during_a_report_leaves_no_location_state(replicas, redis_sync):
    """A report racing a withdrawal either lands first (and is then closed by the withdrawal) or is
    refused; never a visit left open, and state kept, for a customer without location consent."""
    a, b = replicas
    assert a.put("/v1/stores/duomo", headers=ADMIN, json=circle_store("duomo", LAT, LON, 80)).status_code == 201
    wait_until(lambda: _near(b) == ["duomo"], 3, what="replica B sees the store")
    no = {"location": False, "marketing": True, "personalisation": True}
    for k in range(150):
        device, customer = f"w-phone-{k}", f"w-cust-{k}"
        dev = register(a, device, customer)
        _race(lambda: a.put(f"/v1/customers/{customer}/consent", headers=ADMIN, json=no).raise_for_status(),
              lambda: b.post("/v1/locations", headers=dev,
                             json={"device_id": device, "fixes": [fix(LAT, LON, time.time() - 1)]}).raise_for_status())
        assert not redis_sync.exists(DeviceKeys(device, 16).state), f"state kept after withdrawal (round {k})"
        types = [e.type for e in stream_events(redis_sync, device)]
        assert types in ([], ["enter", "exit"]), (k, types)


def test_phone_changing_hands_during_a_report_does_not_carry_the_visit_over(replicas, redis_sync):
    a, b = replicas
    assert a.put("/v1/stores/duomo", headers=ADMIN, json=circle_store("duomo", LAT, LON, 80)).status_code == 201
    wait_until(lambda: _near(b) == ["duomo"], 3, what="replica B sees the store")
    register(a, "seed-phone", "new-owner")  # gives the new owner location consent
    for k in range(150):
        device = f"h-phone-{k}"
        old = register(a, device, "old-owner")
        reg = {"device_id": device, "customer_id": "new-owner", "platform": "android", "push_token": "p"}
        _race(lambda: a.post("/v1/devices", headers=ADMIN, json=reg).raise_for_status(),
              lambda: b.post("/v1/locations", headers=old,
                             json={"device_id": device, "fixes": [fix(LAT, LON, time.time() - 1)]}))
        assert not redis_sync.exists(DeviceKeys(device, 16).state), f"old owner's visit survived (round {k})"
