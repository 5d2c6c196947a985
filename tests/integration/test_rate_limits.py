"""Rate limits per device token and per API key, in a real Redis: a 429 problem+json with
`Retry-After` past the limit, one caller's flood never limits another, the defaults let a phone's
backlog through, and a Redis that does not answer lets requests through (fail open)."""
from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from vicino.services.geo.app import create_app
from vicino.services.kernel.rate_limits import DEVICE_LOCATIONS, KEY, RateLimit, bucket_key
from vicino.services.runtime.rate_limit import RateLimiter
from testbed.processes import free_port
from tests.conftest import ADMIN_TOKEN, fix, make_settings, register
from tests.support import assert_problem

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BURST = 3
SLOW = 0.001  # one request per 1000 s once the burst is spent: a test never sees it refill


def tight(redis_url, **overrides):
    limits = {"rate_limit_locations_per_s": SLOW, "rate_limit_locations_burst": BURST,
              "rate_limit_device_per_s": SLOW, "rate_limit_device_burst": BURST,
              "rate_limit_key_per_s": SLOW, "rate_limit_key_burst": BURST}
    return TestClient(create_app(make_settings(redis_url, **{**limits, **overrides})), raise_server_exceptions=False)


def post_fixes(client, headers, device_id, n_fixes=1, t0=None):
    t0 = time.time() - 3600 if t0 is None else t0
    return client.post("/v1/locations", headers=headers, json={
        "device_id": device_id, "fixes": [fix(45.0, 9.0, t0 + i) for i in range(n_fixes)]})


def make_key(client, *roles) -> tuple[str, dict]:
    r = client.post("/v1/keys", headers=ADMIN, json={"name": "rl", "roles": list(roles)})
    assert r.status_code == 201, r.text
    return r.json()["key_id"], {"Authorization": f"Bearer {r.json()['key']}"}


def assert_too_many(r, *needles):
    body = assert_problem(r, 429, *needles)
    retry = int(r.headers["Retry-After"])
    assert retry >= 1
    assert r.headers["RateLimit-Limit"] == str(BURST) and r.headers["RateLimit-Remaining"] == "0"
    return body, retry


def test_a_device_past_its_location_limit_gets_429_with_retry_after_and_others_do_not(redis_url):
    with tight(redis_url) as client:
        flooder = register(client, "dev-flood", "cust-flood")
        calm = register(client, "dev-calm", "cust-calm")
        t0 = time.time() - 3600
        for i in range(BURST):
            assert post_fixes(client, flooder, "dev-flood", t0=t0 + i).status_code == 200
        body, retry = assert_too_many(post_fixes(client, flooder, "dev-flood", t0=t0 + 10), "this device",
                                      "location reports")
        assert retry >= 900  # the next slot is 1000 s away at 0.001/s
        # the flooding device's refusals do not reach another device
        for i in range(BURST):
            assert post_fixes(client, calm, "dev-calm", t0=t0 + i).status_code == 200
        # location reports and the device's other calls have buckets of their own
        r = client.get("/v1/devices/dev-flood", headers=flooder)
        assert r.status_code == 200, r.text


def test_an_api_key_past_its_limit_gets_429_and_another_key_and_the_admin_token_do_not(redis_url):
    with tight(redis_url) as client:
        key_a, a = make_key(client, "analyst")
        _, b = make_key(client, "analyst")
        for _ in range(BURST):
            assert client.get("/v1/stores?lat=45&lon=9", headers=a).status_code == 200
        assert_too_many(client.get("/v1/stores?lat=45&lon=9", headers=a), f"API key {key_a}")
        # refused before its body and its route: a write by a limited key is not even read
        assert_too_many(client.post("/v1/stores", headers=a, content=b"not json"), key_a)
        assert client.get("/v1/stores?lat=45&lon=9", headers=b).status_code == 200
        for _ in range(3 * BURST):  # the bootstrap admin token is not limited
            assert client.get("/v1/stores?lat=45&lon=9", headers=ADMIN).status_code == 200


def test_the_defaults_let_a_backlog_flush_through(redis_url):
    """A phone back online after a long offline spell: 50 batches of 100 fixes, sent at once."""
    with TestClient(create_app(make_settings(redis_url)), raise_server_exceptions=False) as client:
        dev = register(client, "dev-backlog", "cust-backlog")
        t0 = time.time() - 6 * 3600
        for batch in range(50):
            r = post_fixes(client, dev, "dev-backlog", 100, t0 + batch * 100)
            assert r.status_code == 200, (batch, r.text)
            assert r.json()["accepted"] == 100


def test_limits_can_be_turned_off(redis_url):
    with tight(redis_url, rate_limits=False) as client:
        dev = register(client, "dev-off", "cust-off")
        t0 = time.time() - 3600
        for i in range(3 * BURST):
            assert post_fixes(client, dev, "dev-off", t0=t0 + i).status_code == 200


def test_the_bucket_refills_at_the_sustained_rate(redis_sync, redis_url):
    """GCRA in Redis: `burst` at once, then one per interval (checked on the script directly,
    with a fast rate: the refill is waited for, not timed)."""
    async def run():
        client = aioredis.Redis.from_url(redis_url)
        limiter = RateLimiter(client, {KEY: RateLimit(per_s=20, burst=2)})
        try:
            first = [await limiter.check(KEY, "k-refill") for _ in range(3)]
            assert [v.allowed for v, _ in first] == [True, True, False]
            assert first[0][0].remaining == 1 and first[1][0].remaining == 0
            assert 0 < first[2][0].wait_us <= 50_000
            deadline = time.monotonic() + 10
            while not (await limiter.check(KEY, "k-refill"))[0].allowed:
                assert time.monotonic() < deadline, "the bucket never refilled"
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    asyncio.run(run())
    key = bucket_key(KEY, "k-refill")
    assert "k-refill" not in key and 0 < redis_sync.pttl(key) <= 1000  # expires once full again


def test_a_redis_that_does_not_answer_lets_requests_through():
    async def run():
        client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
        try:
            return await RateLimiter(client, {DEVICE_LOCATIONS: RateLimit(1, 1)}).check(DEVICE_LOCATIONS, "d")
        finally:
            await client.aclose()

    assert asyncio.run(run()) is None


@pytest.mark.parametrize("header", ["", "Bearer nonsense", "Basic abc"])
def test_no_credential_is_refused_before_any_body_or_route(client, header):
    headers = {"Authorization": header} if header else {}
    r = client.post("/v1/stores", headers=headers, content=b"{" * 10_000)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200  # health, metrics and docs stay open
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_buckets_spread_over_a_redis_cluster(tmp_path):
    """Each bucket has a hash tag of its own: the script runs on the node that owns the caller's
    slot, through the same cluster client the services use."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
    from vicino.services.runtime.redis_client import open_async

    cluster = EmbeddedRedisCluster(tmp_path / "cluster").start()
    try:
        async def run():
            redis = open_async(cluster.url)
            assert isinstance(redis, AsyncRedisCluster)
            try:
                limiter = RateLimiter(redis, {KEY: RateLimit(per_s=SLOW, burst=2)})
                subjects = [f"key-{i}" for i in range(8)]
                verdicts = {s: [(await limiter.check(KEY, s))[0].allowed for _ in range(3)] for s in subjects}
                nodes = {redis.get_node_from_key(bucket_key(KEY, s)).port for s in subjects}
                return nodes, verdicts
            finally:
                await redis.aclose()

        nodes, verdicts = asyncio.run(run())
        assert len(nodes) > 1, "every bucket landed on one node"
        assert all(v == [True, True, False] for v in verdicts.values()), verdicts
    finally:
        cluster.stop()


def test_redis_away_is_a_503_for_a_key_and_for_a_device_never_a_429_or_a_500(tmp_path):
    """The key is read at the edge (503 there, as the routes answer); the device's limit fails
    open and its route meets the missing Redis (503)."""
    from vicino.services.launcher.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        with TestClient(create_app(make_settings(server.url)), raise_server_exceptions=False) as client:
            dev = register(client, "dev-away", "cust-away")
            _, key = make_key(client, "analyst")
            assert client.get("/v1/stores?lat=45&lon=9", headers=key).status_code == 200
            server.proc.kill()
            server.proc.wait()
            r = client.get("/v1/stores?lat=45&lon=9", headers=key)
            assert_problem(r, 503, "Redis is unavailable")
            assert r.headers["retry-after"] == "1"
            assert_problem(post_fixes(client, dev, "dev-away"), 503, "Redis is unavailable")
    finally:
        server.stop()
