"""The housekeeping jobs on real streams, on one Redis and on a 3-master Redis Cluster: trimming
keeps whatever a consumer group has not acknowledged (and everything for a group that does not
exist yet) and what the KPIs must keep; stuck entries go to the dead letters; departed
consumers are removed."""
import asyncio
import time

import pytest
import redis as redis_lib
from redis.cluster import RedisCluster

from vicino.services.kernel.contracts.decisions import decisions_stream_key
from vicino.services.kernel.contracts.deliveries import receipts_stream_key
from vicino.services.kernel.contracts.geofence_events import events_stream_key
from vicino.services.kernel.contracts.push_jobs import push_jobs_stream_key
from vicino.services.kernel.contracts.streams import (PUSH_GATEWAY_GROUP, RECOMMENDER_DECISIONS_GROUP,
                                               RECOMMENDER_VISITS_GROUP, dead_letter_of)
from vicino.services.kernel.jobs import JobContext
from vicino.services.runtime.redis_client import open_async
from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from vicino.services.scheduler.settings import SchedulerSettings
from vicino.services.scheduler.use_cases.housekeeping import reclaim_stuck, trim_streams
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET

DAY_MS = 86_400_000


def settings_for(url: str, shards: int) -> SchedulerSettings:
    return SchedulerSettings(redis_url=url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET,
                             event_shards=shards, customer_shards=shards)


def run(job, url: str, settings):
    async def main():
        client = open_async(url)
        try:
            return await job(JobContext(client), settings)
        finally:
            await client.aclose()

    return asyncio.run(main())


def ids(r, stream) -> list[str]:
    return [i.decode() for i, _ in r.xrange(stream)]


def scenario(r, shards: int):
    """Streams of the last shard, in the state a running system leaves them."""
    shard = shards - 1
    now_ms = int(time.time() * 1000)
    events = events_stream_key(shard)
    e = [r.xadd(events, {"v": "1", "event": f"e{i}"}).decode() for i in range(10)]
    r.xgroup_create(events, RECOMMENDER_VISITS_GROUP, id="0")
    r.xgroup_create(events, RECOMMENDER_DECISIONS_GROUP, id="0")
    r.xreadgroup(RECOMMENDER_VISITS_GROUP, "v-1", {events: ">"})
    r.xack(events, RECOMMENDER_VISITS_GROUP, *e)
    r.xreadgroup(RECOMMENDER_DECISIONS_GROUP, "d-1", {events: ">"}, count=6)
    r.xack(events, RECOMMENDER_DECISIONS_GROUP, *e[:4])  # e4, e5 still pending
    r.xadd(dead_letter_of(events), {"x": "old"}, id=f"{now_ms - 31 * DAY_MS}-0")
    r.xadd(dead_letter_of(events), {"x": "new"}, id=f"{now_ms - DAY_MS}-0")
    jobs = push_jobs_stream_key(shard)  # the gateway has never started: no group
    for i in range(3):
        r.xadd(jobs, {"v": "1", "data": f"j{i}"})
    for stream in (decisions_stream_key(shard), receipts_stream_key(shard)):
        r.xadd(stream, {"v": "1", "data": "old"}, id=f"{now_ms - 36 * DAY_MS}-0")
        r.xadd(stream, {"v": "1", "data": "kept"}, id=f"{now_ms - 34 * DAY_MS}-0")
    return shard, e


def check_trim(r, url: str, shards: int):
    shard, e = scenario(r, shards)
    summary = run(trim_streams, url, settings_for(url, shards))
    assert summary["trimmed"] == {"geo_events": 4, "geo_events:dead": 1, "decisions": 1, "delivery_receipts": 1}
    assert summary["kept"] == {"push_jobs": "group push-gateway does not exist yet"}
    assert ids(r, events_stream_key(shard)) == e[4:]  # from the oldest entry a group still has pending
    assert r.xlen(push_jobs_stream_key(shard)) == 3
    assert [f[b"data"] for _, f in r.xrange(decisions_stream_key(shard))] == [b"kept"]
    assert [f[b"x"] for _, f in r.xrange(dead_letter_of(events_stream_key(shard)))] == [b"new"]
    # once the group acknowledges, the rest goes; a second run with nothing new trims nothing more
    r.xack(events_stream_key(shard), RECOMMENDER_DECISIONS_GROUP, *e[4:6])
    r.xreadgroup(RECOMMENDER_DECISIONS_GROUP, "d-1", {events_stream_key(shard): ">"})
    r.xack(events_stream_key(shard), RECOMMENDER_DECISIONS_GROUP, *e[6:])
    assert run(trim_streams, url, settings_for(url, shards))["trimmed"] == {"geo_events": 6}
    assert r.xlen(events_stream_key(shard)) == 0
    assert run(trim_streams, url, settings_for(url, shards))["trimmed"] == {}


def check_reclaim(r, url: str, shards: int):
    shard = 0
    jobs = push_jobs_stream_key(shard)
    j = [r.xadd(jobs, {"v": "1", "data": f"job{i}"}).decode() for i in range(3)]
    r.xgroup_create(jobs, PUSH_GATEWAY_GROUP, id="0")
    r.xreadgroup(PUSH_GATEWAY_GROUP, "host-1", {jobs: ">"})
    # j0 crashed every consumer that took it; j1 waits for its consumer; j2 is being handled
    r.xclaim(jobs, PUSH_GATEWAY_GROUP, "host-1", 0, [j[0]], idle=700_000, retrycount=12)
    r.xclaim(jobs, PUSH_GATEWAY_GROUP, "host-1", 0, [j[1]], idle=700_000, retrycount=2)
    r.execute_command("XGROUP", "CREATECONSUMER", jobs, PUSH_GATEWAY_GROUP, "host-2-departed")
    settings = settings_for(url, shards).model_copy(update={"consumer_idle_s": 0.3})
    time.sleep(0.4)
    summary = run(reclaim_stuck, url, settings)
    assert summary["dead_lettered"] == {PUSH_GATEWAY_GROUP: 1} and summary["waiting"] == {PUSH_GATEWAY_GROUP: 1}
    assert summary["consumers_removed"] >= 1  # (and check_trim's consumers, idle now, when it ran first)
    dead = r.xrange(dead_letter_of(jobs))
    assert len(dead) == 1 and dead[0][1][b"data"] == b"job0" and dead[0][1][b"dead_from"].decode() == j[0]
    assert b"delivered 12 times" in dead[0][1][b"dead_reason"]
    pending = {p["message_id"].decode() for p in r.xpending_range(jobs, PUSH_GATEWAY_GROUP, "-", "+", 10)}
    assert pending == {j[1], j[2]}
    consumers = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                 for c in r.xinfo_consumers(jobs, PUSH_GATEWAY_GROUP)}
    assert "host-2-departed" not in consumers and "host-1" in consumers


def test_trim_streams(redis_url):
    check_trim(redis_lib.Redis.from_url(redis_url), redis_url, 2)


def test_reclaim_stuck(redis_url):
    check_reclaim(redis_lib.Redis.from_url(redis_url), redis_url, 2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedRedisCluster(tmp_path_factory.mktemp("housekeeping-cluster")).start()
    yield c
    c.stop()


def test_housekeeping_on_redis_cluster(cluster):
    r = RedisCluster.from_url(cluster.url)
    for node in r.get_primaries():
        r.flushall(target_nodes=[node])
    # 16 shards: the streams spread over the three masters
    check_trim(r, cluster.url, 16)
    check_reclaim(r, cluster.url, 16)


def test_job_runs_and_the_kpis_on_redis_cluster(cluster, tmp_path):
    """The run lock and log scripts ({jobs}) and the KPI reads (every shard's streams, merges,
    the {kpis} roll-ups) on a cluster: the same figures as on one Redis."""
    from fastapi.testclient import TestClient

    from vicino.services.recommender.app import create_app as create_recommender
    from vicino.services.scheduler.wiring import build
    from tests.conftest import make_rec_settings
    from tests.integration.test_kpis_api import ADMIN, FROM, TO, roll_up, seed_history
    from tests.integration.test_scheduler import test_jobs

    r = RedisCluster.from_url(cluster.url)
    for node in r.get_primaries():
        r.flushall(target_nodes=[node])

    async def two_runners():
        client = open_async(cluster.url)
        try:
            s = settings_for(cluster.url, 16)
            a, b = build(s, client, test_jobs(), host="a").runner, build(s, client, test_jobs(), host="b").runner
            results = await asyncio.gather(a.run("slow"), b.run("slow"))
            history = await a.store.history("slow", 10)
            return sorted(x.status for x in results), history
        finally:
            await client.aclose()

    statuses, history = asyncio.run(two_runners())
    assert statuses == ["locked", "ran"] and [h.outcome for h in history] == ["ok"]

    settings = make_rec_settings(cluster.url, history_dir=str(tmp_path / "history"), attribution_window_h=24.0)
    with TestClient(create_recommender(settings), raise_server_exceptions=False) as c:
        seed_history(r, settings.customer_shards, settings.history_dir, c)
        k = c.get("/v1/kpis", headers=ADMIN, params={"from": FROM, "to": TO}).json()
        assert (k["decisions"]["total"], k["deliveries"]["sent"], k["conversions"]["anywhere"]["conversions"],
                k["uplift"]["treated"]["converted"], k["uplift"]["holdout"]["converted"]) == (6, 2, 2, 2, 1)
        assert FROM in roll_up(cluster.url, settings)["rolled_up"]
        assert [d["date"] for d in c.get("/v1/kpis/daily", headers=ADMIN, params={"from": FROM, "to": TO})
                .json()["days"]] == [FROM]
