"""`ReplicaWait` against real replicas: a standalone master with one replica, and a Cluster
with a replica per master, where the key's master is found by slot and the probe write shares
the connection of the WAIT (WAIT only covers its own connection's writes)."""
from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from vicino.services.launcher.embedded_redis import EmbeddedRedis, EmbeddedRedisCluster
from vicino.services.runtime.redis_client import ReplicaWait, open_async

log = logging.getLogger("test")


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings():
    h = Recorder()
    log.addHandler(h)
    yield h.messages
    log.removeHandler(h)


def test_a_write_waits_for_the_replica_of_a_standalone_master(tmp_path, warnings):
    asyncio.run(_standalone(tmp_path, warnings))


async def _standalone(tmp_path, warnings):
    with EmbeddedRedis(tmp_path / "m2", persist=False) as master:
        replica = EmbeddedRedis(tmp_path / "r2", persist=False,
                                extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
        try:
            r = aioredis.Redis(port=master.port)
            for _ in range(200):  # the replica's first full sync
                if (await aioredis.Redis(port=replica.port).info("replication")).get("master_link_status") == "up":
                    break
                await asyncio.sleep(0.05)
            ok = await r.info("replication")
            wait = ReplicaWait(r, master.url, 1, 2000, log)
            await r.set("vicino:{x}:k", "v")
            await wait.after_write("vicino:{x}:k")
            assert not warnings, warnings
            assert await aioredis.Redis(port=replica.port).get("vicino:{x}:k") == b"v"
            replica.stop()  # no replica left: the wait gives up after its timeout and says so
            short = ReplicaWait(r, master.url, 1, 50, log)
            await r.set("vicino:{x}:k", "w")
            await short.after_write("vicino:{x}:k")
            assert warnings == ["write not replicated in time"]
            assert await r.get("vicino:{x}:k") == b"w"  # the write stands
            assert ok["role"] == "master"
            await r.aclose()
        finally:
            replica.stop()


def test_a_write_waits_for_its_own_masters_replica_in_a_cluster(tmp_path, warnings):
    asyncio.run(_cluster(tmp_path, warnings))


async def _cluster(tmp_path, warnings):
    with EmbeddedRedisCluster(tmp_path / "c", replicas=1, node_timeout_ms=2000) as cluster:
        r = open_async(cluster.seeds_url)
        wait = ReplicaWait(r, cluster.seeds_url, 1, 2000, log)
        keys = [f"vicino:{{cs:{i:03d}}}:customer:c{i}:deliveries" for i in range(30)]
        for k in keys:  # keys on every master
            await r.set(k, "v")
            await wait.after_write(k)
        assert not warnings, warnings
        assert len(wait._nodes) == 3  # one probe connection per master
        await wait.aclose()
        await r.aclose()
        off = ReplicaWait(r, cluster.seeds_url, 0, 2000, log)
        await off.after_write(keys[0])  # 0 replicas: nothing sent (the client is already closed)
