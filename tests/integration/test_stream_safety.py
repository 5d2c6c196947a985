"""A flood of stream entries never silently costs a consumer group what it has not read, and every
group's backlog is on /metrics. Real Redis (one node and a Cluster), real processes:

- trim_streams keeps every entry a group that is behind still needs; past the hard cap it drops
  the oldest anyway, and counts them (a counter beside the stream that the consumers' /metrics
  export) and says so in a warning;
- the lag collector reports, per stream and group, the entries not yet delivered, the pending
  ones and the age of the oldest pending one; the recommender-worker (served as its own process)
  and the push gateway show them on /metrics, beside /healthz."""
import asyncio
import logging
import time

import httpx
import pytest
import redis as redis_lib
import redis.asyncio
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from vicino.services.kernel.contracts.geofence_events import events_stream_key
from vicino.services.kernel.contracts.push_jobs import push_jobs_stream_key
from vicino.services.kernel.contracts.streams import (PUSH_GATEWAY_GROUP, RECOMMENDER_DECISIONS_GROUP,
                                                      RECOMMENDER_VISITS_GROUP, trimmed_unconsumed_key)
from vicino.services.kernel.jobs import JobContext
from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from vicino.services.push_gateway.app import create_app as create_push_app
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.runtime.redis_client import open_async
from vicino.services.runtime.stream_lag import StreamLagCollector
from vicino.services.scheduler.settings import SchedulerSettings
from vicino.services.scheduler.use_cases.housekeeping import trim_streams
from testbed.processes import served_service
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET

HOUR_MS = 3_600_000


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from a /metrics body."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run_trim(url: str, hard_cap: int, log: logging.Logger) -> dict:
    settings = SchedulerSettings(redis_url=url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET, event_shards=1,
                                 customer_shards=1, stream_hard_cap=hard_cap)

    async def main():
        client = open_async(url)
        try:
            return await trim_streams(JobContext(client, log=log), settings)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_group_behind_keeps_its_entries_until_the_hard_cap_which_is_counted_and_logged(redis_url, caplog):
    r = redis_lib.Redis.from_url(redis_url)
    events = events_stream_key(0)
    ids = [r.xadd(events, {"v": "1", "event": f"e{i}"}).decode() for i in range(1500)]
    r.xgroup_create(events, RECOMMENDER_VISITS_GROUP, id="0")
    r.xgroup_create(events, RECOMMENDER_DECISIONS_GROUP, id="0")
    r.xreadgroup(RECOMMENDER_VISITS_GROUP, "v", {events: ">"})
    r.xack(events, RECOMMENDER_VISITS_GROUP, *ids)          # visits has read everything
    r.xreadgroup(RECOMMENDER_DECISIONS_GROUP, "d", {events: ">"}, count=100)
    r.xack(events, RECOMMENDER_DECISIONS_GROUP, *ids[:100])  # decisions is 1400 behind
    log = logging.getLogger("vicino.jobs.test")

    # under the cap: only what both groups are done with goes, the laggard's 1400 stay
    with caplog.at_level(logging.WARNING, logger=log.name):
        summary = run_trim(redis_url, 2000, log)
    assert summary["trimmed"] == {"geo_events": 100} and "trimmed_unconsumed" not in summary
    assert [i.decode() for i, _ in r.xrange(events)] == ids[100:]
    assert r.get(trimmed_unconsumed_key(events)) is None
    assert not [rec for rec in caplog.records if "hard cap" in rec.getMessage()]

    # past the cap: the oldest still-needed entries go, counted and logged
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=log.name):
        summary = run_trim(redis_url, 1000, log)
    assert summary["trimmed_unconsumed"] == {"geo_events": 400}
    assert [i.decode() for i, _ in r.xrange(events)] == ids[500:]
    assert int(r.get(trimmed_unconsumed_key(events))) == 400
    (warning,) = [rec for rec in caplog.records if "hard cap" in rec.getMessage()]
    assert warning.levelno == logging.WARNING
    assert warning.fields["stream"] == events and warning.fields["trimmed"] == 400
    assert warning.fields["groups"][RECOMMENDER_DECISIONS_GROUP] == ids[99]

    # the consumers' collector exports the counter
    assert collected(redis_url, [(events, RECOMMENDER_DECISIONS_GROUP)])[
        ("vicino_stream_trimmed_unconsumed_total", (("stream", events),))] == 400


def test_a_stream_whose_group_never_started_keeps_everything_until_the_hard_cap(redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    jobs = push_jobs_stream_key(0)
    for i in range(1200):
        r.xadd(jobs, {"v": "1", "data": f"j{i}"})
    summary = run_trim(redis_url, 1000, logging.getLogger("vicino.jobs.test"))
    assert summary["kept"] == {"push_jobs": f"group {PUSH_GATEWAY_GROUP} does not exist yet"}
    assert summary["trimmed_unconsumed"] == {"push_jobs": 200} and r.xlen(jobs) == 1000
    assert int(r.get(trimmed_unconsumed_key(jobs))) == 200


def behind(r, stream: str, group: str, now_ms: int) -> None:
    """A group with 2 entries pending for another consumer (the oldest 2 h old) and 3 not delivered."""
    r.xadd(stream, {"v": "1", "data": "old"}, id=f"{now_ms - 2 * HOUR_MS}-0")
    r.xadd(stream, {"v": "1", "data": "newer"}, id=f"{now_ms - HOUR_MS}-0")
    r.xgroup_create(stream, group, id="0")
    r.xreadgroup(group, "another-host-1", {stream: ">"}, count=2)
    for i in range(3):
        r.xadd(stream, {"v": "1", "data": f"new{i}"})


def collected(url: str, groups, clock=time.time, *, open_client=open_async) -> dict:
    async def main():
        client = open_client(url)
        try:
            collector = StreamLagCollector(client, groups, clock=clock)
            await collector.refresh()
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in collector.collect() for s in family.samples}
        finally:
            await client.aclose()

    return asyncio.run(main())


def check_lag(r, url: str, streams: list[str]):
    now_ms = int(time.time() * 1000)
    for stream in streams:
        behind(r, stream, PUSH_GATEWAY_GROUP, now_ms)
    missing = push_jobs_stream_key(99)  # a stream no one has written yet
    got = collected(url, [(s, PUSH_GATEWAY_GROUP) for s in streams] + [(streams[0], "never-started"),
                                                                        (missing, PUSH_GATEWAY_GROUP)],
                    clock=lambda: now_ms / 1000)
    for stream in streams:
        labels = (("group", PUSH_GATEWAY_GROUP), ("stream", stream))
        assert got[("vicino_stream_group_lag", labels)] == 3
        assert got[("vicino_stream_group_pending", labels)] == 2
        assert got[("vicino_stream_group_oldest_pending_age_seconds", labels)] == 7200
    assert not [k for k in got if ("group", "never-started") in k[1] or ("stream", missing) in k[1]
                and k[0] != "vicino_stream_trimmed_unconsumed_total"]  # no group or stream yet: no sample, no error
    assert got[("vicino_stream_lag_read_failures_total", ())] == 0


def test_lag_pending_and_oldest_pending_age_per_group(redis_url):
    check_lag(redis_lib.Redis.from_url(redis_url), redis_url, [push_jobs_stream_key(i) for i in range(2)])


def test_lag_on_a_redis_cluster(tmp_path):
    cluster = EmbeddedRedisCluster(tmp_path / "cluster").start()
    try:
        r = RedisCluster.from_url(cluster.url)
        streams = [push_jobs_stream_key(i) for i in range(8)]  # spread over the three masters
        assert len({r.keyslot(s) for s in streams}) == 8
        check_lag(r, cluster.url, streams)
        r.close()
    finally:
        cluster.stop()


def test_a_scrape_without_redis_reports_the_failure_and_does_not_hang():
    # a plain client: open_async itself asks the server whether it is a Cluster
    got = collected("redis://127.0.0.1:1/0", [(push_jobs_stream_key(0), PUSH_GATEWAY_GROUP)],
                    open_client=redis_lib.asyncio.Redis.from_url)
    assert got[("vicino_stream_lag_read_failures_total", ())] == 1
    assert not [k for k in got if k[0].startswith("vicino_stream_group_")]


def test_the_served_recommender_worker_serves_health_and_its_groups_lag(redis_url, tmp_path):
    r = redis_lib.Redis.from_url(redis_url)
    events = events_stream_key(0)
    now_ms = int(time.time() * 1000)
    # entries pending for a consumer that is not this worker (claimed only after VICINO_CLAIM_IDLE_MS)
    r.xadd(events, {"v": "1", "event": "x"}, id=f"{now_ms - HOUR_MS}-0")
    r.xgroup_create(events, RECOMMENDER_VISITS_GROUP, id="0")
    r.xreadgroup(RECOMMENDER_VISITS_GROUP, "another-host-1", {events: ">"})
    env = {"VICINO_EVENT_SHARDS": "1", "VICINO_CUSTOMER_SHARDS": "1", "VICINO_GEO_URL": "http://127.0.0.1:9",
           "VICINO_HISTORY_DIR": str(tmp_path / "history"), "VICINO_MODEL_DIR": str(tmp_path / "models")}
    with served_service("recommender-worker", redis_url, tmp_path, env=env) as url:
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        got = samples(httpx.get(url + "/metrics", timeout=5).text)
    visits = (("group", RECOMMENDER_VISITS_GROUP), ("stream", events))
    assert got[("vicino_stream_group_pending", visits)] == 1
    assert 3600 <= got[("vicino_stream_group_oldest_pending_age_seconds", visits)] < 3600 + 120
    assert got[("vicino_stream_group_lag", visits)] == 0
    for group in (RECOMMENDER_DECISIONS_GROUP, RECOMMENDER_VISITS_GROUP):  # the groups the worker consumes
        assert ("vicino_stream_group_pending", (("group", group), ("stream", events))) in got
    exported = (("group", "exporter"), ("stream", "vicino:{cs:000}:interactions:v1"))
    assert ("vicino_stream_group_pending", exported) in got
    assert ("vicino_consumer_healthy", (("group", RECOMMENDER_VISITS_GROUP),)) in got


def test_the_push_gateway_serves_its_groups_lag(redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    jobs = push_jobs_stream_key(0)
    behind(r, jobs, PUSH_GATEWAY_GROUP, int(time.time() * 1000))
    settings = PushSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET,
                            customer_shards=1, geo_url="http://127.0.0.1:9", recommender_url="http://127.0.0.1:9")
    with TestClient(create_push_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        got = samples(client.get("/metrics").text)
    labels = (("group", PUSH_GATEWAY_GROUP), ("stream", jobs))
    assert got[("vicino_stream_group_pending", labels)] >= 2  # the other host's two, and whatever this one took
    assert 7200 <= got[("vicino_stream_group_oldest_pending_age_seconds", labels)] < 7200 + 120
    assert ("vicino_stream_group_lag", labels) in got


def test_the_push_jobs_last_resort_cap_counts_what_it_trims_and_the_consumer_says_so(redis_url, caplog):
    """The decision script caps a push-job stream only as a last resort; what that trims is unsent
    jobs: counted beside the stream, and the push gateway's next scrape logs the growth."""
    from vicino.services.kernel.contracts.decisions import DecisionV1
    from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1
    from vicino.services.recommender.adapters.decision_repository import Counters, DecisionRepository

    r = redis_lib.Redis.from_url(redis_url)
    now = time.time()
    jobs = push_jobs_stream_key(0)
    r.xgroup_create(jobs, PUSH_GATEWAY_GROUP, id="0", mkstream=True)  # the gateway, stopped: it reads nothing

    def decided(i: int):
        visit, decision_id = f"v-{i}", f"d-{i}"
        job = PushJobV1(job_id=f"j-{i}", idempotency_key=f"cu-1:s-1:{visit}", customer_id="cu-1", device_id="ph-1",
                        platform="android", push_token="t", title="t", body="b",
                        data=PushDataV1(offer_id="o-1", store_id="s-1", visit_id=visit, decision_id=decision_id),
                        collapse_key=visit, created_at=now, expires_at=now + 600)
        decision = DecisionV1(decision_id=decision_id, customer_id="cu-1", device_id="ph-1", store_id="s-1",
                              visit_id=visit, event_id=f"e-{i}", event_type="enter", outcome="send", holdout=False,
                              offer_id="o-1", job_id=job.job_id, ts=now, decided_at=now)
        return decision, job

    async def main():
        client = open_async(redis_url)
        try:
            repo = DecisionRepository(client, 1, 3600, 0, erasure_key=b"k" * 32, push_jobs_maxlen=100)
            lag = StreamLagCollector(client, [(jobs, PUSH_GATEWAY_GROUP)])
            await lag.refresh()  # before: nothing trimmed
            for i in range(350):
                decision, job = decided(i)
                assert await repo.record("cu-1", Counters(False, False, 0, None), now - 3600, now, decision, job,
                                         counts_as_push=False) == "ok"
            await lag.refresh()
            return {s.name: s.value for f in lag.collect() for s in f.samples
                    if s.name == "vicino_stream_trimmed_unconsumed_total"}
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="vicino.stream_lag"):
        got = asyncio.run(main())
    length = r.xlen(jobs)
    assert 100 <= length < 350
    assert int(r.get(trimmed_unconsumed_key(jobs))) == 350 - length == got["vicino_stream_trimmed_unconsumed_total"]
    (warning,) = [rec for rec in caplog.records if "trimmed before every consumer group" in rec.getMessage()]
    assert warning.fields["stream"] == jobs and warning.fields["trimmed"] == 350 - length


def test_geos_last_resort_cap_counts_what_it_trims(redis_url):
    """Geo's own cap on its event streams (far above `trim_streams`' hard cap, a last resort when
    housekeeping is not running) trims entries no group may have read: each trim is counted in
    the stream's trimmed-unconsumed counter, on both paths that append events."""
    from vicino.services.geo.adapters.device_repository import DeviceRepository
    from vicino.services.geo.domain.transitions import DeviceState
    from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1

    r = redis_lib.Redis.from_url(redis_url)
    stream = events_stream_key(0)
    r.xgroup_create(stream, RECOMMENDER_VISITS_GROUP, id="0", mkstream=True)  # a consumer that reads nothing
    now = time.time()

    def events(n: int, start: int) -> list[GeofenceEventV1]:
        return [GeofenceEventV1(event_id=f"e-{i}", type="enter" if i % 2 == 0 else "exit", device_id="ph-cap",
                                customer_id="cu-cap", store_id="s-1", visit_id=f"v-{i}", ts=now, emitted_at=now)
                for i in range(start, start + n)]

    async def main():
        client = open_async(redis_url)
        try:
            repo = DeviceRepository(client, 1, 100)
            reg = repo.keys("ph-cap").registration
            await client.hset(reg, mapping={"customer_id": "cu-cap", "token_id": "t1", "location_consent": "1"})
            rev = "0"
            for batch in range(6):  # the save script's path: 300 events in batches of 50
                saved = await repo.save_state("ph-cap", rev, DeviceState().to_json(), 60, events(50, 50 * batch), "t1")
                assert saved.saved, batch
                rev = saved.rev
            after_saves = int(await client.get(trimmed_unconsumed_key(stream)) or 0)
            await repo.append_events("ph-cap", events(150, 300))  # the Python path (consent withdrawal's exits)
            return after_saves
        finally:
            await client.aclose()

    after_saves = asyncio.run(main())
    length = r.xlen(stream)
    assert 100 <= length < 450
    assert 0 < after_saves < 300
    assert int(r.get(trimmed_unconsumed_key(stream))) == 450 - length  # every entry trimmed is counted
