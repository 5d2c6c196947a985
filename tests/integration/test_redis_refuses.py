"""A Redis that is there but refuses to write (issue #15, "Redis refusing, not only absent"): a
replica after a failover (READONLY) or a full one (OOM under `noeviction`) makes every service
answer 503 with `Retry-After`, never 500, and the service serves again once Redis does."""
from __future__ import annotations

import time

import pytest

from tests.conftest import circle_store
from tests.support import assert_problem


@pytest.fixture
def restore(redis_sync):
    yield redis_sync
    redis_sync.execute_command("REPLICAOF", "NO", "ONE")
    redis_sync.config_set("maxmemory", 0)


def test_a_read_only_replica_is_a_503_with_retry_after(client, rec_client, admin, restore):
    assert client.put("/v1/stores/s1", headers=admin, json=circle_store("s1", 45.0, 9.0)).status_code == 201
    restore.execute_command("REPLICAOF", "127.0.0.1", "1")  # a master that is not there: read-only, data kept
    r = client.put("/v1/stores/s2", headers=admin, json=circle_store("s2", 45.0, 9.1))
    assert_problem(r, 503, "refused", "replica")
    assert r.headers["retry-after"] == "1"
    r = rec_client.post("/v1/interactions", headers=admin, json=[{
        "event_id": "e1", "customer_id": "c1", "channel": "web", "type": "view", "item_id": "i1", "ts": time.time()}])
    assert_problem(r, 503, "refused")
    assert client.get("/v1/stores/s1", headers=admin).status_code == 200  # reads go on
    restore.execute_command("REPLICAOF", "NO", "ONE")
    assert client.put("/v1/stores/s2", headers=admin, json=circle_store("s2", 45.0, 9.1)).status_code == 201


def test_maxmemory_reached_is_a_503_with_retry_after(client, admin, restore):
    restore.config_set("maxmemory-policy", "noeviction")
    restore.config_set("maxmemory", 1)
    r = client.put("/v1/stores/s3", headers=admin, json=circle_store("s3", 45.0, 9.2))
    assert_problem(r, 503, "out of memory")
    assert r.headers["retry-after"] == "30"
    restore.config_set("maxmemory", 0)
    assert client.put("/v1/stores/s3", headers=admin, json=circle_store("s3", 45.0, 9.2)).status_code == 201
