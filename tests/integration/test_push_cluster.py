"""The push gateway against a real 3-master Redis Cluster, with the geo service and the
recommender beside it: deliveries over many slots, a duplicate job, token pruning through geo,
receipts, and the erasure of a customer's deliveries."""
from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster

from vicino.services.kernel.contracts.customer_state import device_registration_key
from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from vicino.services.recommender.app import create_app as create_recommender
from tests.conftest import make_rec_settings
from tests.integration._push_support import enqueue, make_job, webhook_sink
from tests.support import redis_dump, served_geo, wait_until
from tests.integration.test_push_gateway import ADMIN, SECRET, gateway, push_settings, receipts, register, settled


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedRedisCluster(tmp_path_factory.mktemp("push-cluster")).start()
    yield c
    c.stop()


def test_the_push_gateway_runs_on_redis_cluster(cluster, tmp_path):
    r = RedisCluster.from_url(cluster.url)
    with served_geo(cluster.url, tmp_path) as geo_url, webhook_sink() as sink, \
            httpx.Client(base_url=geo_url, headers=ADMIN, timeout=30) as geo:
        customers = [f"pc-{i}" for i in range(20)]
        for c in customers:
            register(geo, f"{c}-phone", c)
        with gateway(push_settings(cluster.url, webhook_url=sink.url, webhook_secret=SECRET), geo_url) as client:
            jobs = [make_job(c, f"{c}-phone", platform="web") for c in customers]
            for j in jobs:
                enqueue(r, j)
            enqueue(r, jobs[0])  # redelivered: still one push
            assert {settled(client, j)["status"] for j in jobs} == {"sent"}
            assert len(sink.received) == 20
            assert [x.status for x in receipts(r, "pc-3") if x.customer_id == "pc-3"] == ["queued", "sent"]
            sink.script.append((410, {}, 0.0))
            dead = make_job("pc-5", "pc-5-phone", platform="web")
            enqueue(r, dead)
            assert settled(client, dead)["status"] == "token_invalid"
            reg_key = device_registration_key("pc-5-phone", 16)
            wait_until(lambda: r.hget(reg_key, "push_token") == b"", 10, what="token removed at geo")
        settings = make_rec_settings(cluster.url, geo_url=geo_url, history_dir=str(tmp_path / "history"),
                                     model_dir=str(tmp_path / "models"))
        with TestClient(create_recommender(settings), raise_server_exceptions=False) as rec:
            assert rec.delete("/v1/customers/pc-3", headers=ADMIN).status_code == 200
        # every key and value as read back (XDEL leaves a deleted entry's bytes inside the stream's
        # node until the node is trimmed: the content a client can read is what is checked)
        dump = repr(redis_dump(_AllPrimaries(r)))
        assert "pc-3" not in dump and "pc-4" in dump
    r.close()


class _AllPrimaries:
    """A cluster client whose KEYS asks every primary (redis_dump reads each key by name)."""

    def __init__(self, r: RedisCluster) -> None:
        self._r = r

    def keys(self, pattern):
        return self._r.keys(pattern, target_nodes=RedisCluster.PRIMARIES)

    def __getattr__(self, name):
        return getattr(self._r, name)
