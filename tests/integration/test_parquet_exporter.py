"""The exporter against a real Redis and a real filesystem: every interaction reaches the Parquet
log exactly once and in order per customer, through crashes (a real SIGKILL of a real process),
concurrent exporters, erasures, deleted and garbage entries, and on a Redis Cluster."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter, defaultdict

import fsspec
import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from vicino.services.kernel.contracts.interactions import (CustomerMergedV1, InteractionV1, customer_shard,
                                                    interactions_stream_key)
from vicino.services.runtime.redis_client import open_async
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS, read_interactions, read_merges
from vicino.services.recommender.adapters.parquet_log import ParquetLog
from vicino.services.recommender.adapters.redis_keys import ERASURES, erasure_digest
from vicino.services.recommender.workers.exporter import GROUP, Exporter, ShardKeys
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET, make_rec_settings
from tests.support import ROOT
from vicino.services.kernel.contracts.erasures import register_key

KEY = register_key(TOKEN_SECRET)  # the erasure register's key, as the services derive it

SHARDS = 4
T0 = 1_780_000_000.0  # 2026-05-28 UTC: every test interaction falls on this one day


def settings_for(redis_url: str, root: str, **kw):
    return make_rec_settings(redis_url, history_dir=root, customer_shards=SHARDS,
                             export_flush_rows=kw.pop("flush_rows", 40), export_flush_s=kw.pop("flush_s", 5.0), **kw)


def interaction(n: int, customer: str, **kw) -> InteractionV1:
    return InteractionV1(event_id=f"ev-{n:05d}", customer_id=customer, channel="web", type="view",
                         item_id=f"sku-{n % 17}", ts=kw.pop("ts", T0 + n), received_at=kw.pop("received_at", T0 + n + 0.5),
                         **kw)


def add(r, item) -> str:
    """XADDs what ingestion writes: the exporter's input, without depending on ingestion."""
    customer = item.customer_id if isinstance(item, InteractionV1) else item.into
    return r.xadd(interactions_stream_key(customer_shard(customer, SHARDS)), item.to_stream_fields()).decode()


def add_many(r, count: int, customers: int | list[str] = 12, start: int = 0) -> dict[str, list[str]]:
    """`count` interactions spread over customers; returns each customer's event ids in stream order."""
    names = customers if isinstance(customers, list) else [f"cust-{i}" for i in range(customers)]
    order: dict[str, list[str]] = defaultdict(list)
    for n in range(start, start + count):
        c = names[n % len(names)]
        add(r, interaction(n, c))
        order[c].append(f"ev-{n:05d}")
    return order


def raw_rows(root: str) -> list[dict]:
    """Every row of every interaction file, not deduplicated, in log order (date, file name)."""
    log = ParquetLog(root)
    rows = []
    for path in log.files(INTERACTIONS):
        with log.fs.open(path, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


def assert_exactly_once_in_order(root: str, expected: dict[str, list[str]]) -> None:
    rows = raw_rows(root)
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicated rows in the Parquet log"
    assert sorted(ids) == sorted(e for evs in expected.values() for e in evs)
    seen: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        seen[r["customer_id"]].append(r["event_id"])
    assert dict(seen) == dict(expected), "per-customer order differs from stream order"


async def _run_once(settings, **kw):
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        return await Exporter(r, settings, **kw).run_once()
    finally:
        await r.aclose()


def run_once(settings, **kw):
    return asyncio.run(_run_once(settings, **kw))


def test_drains_every_interaction_once_in_order_then_trims(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    settings = settings_for(redis_url, root)
    expected = add_many(redis_sync, 500)
    add(redis_sync, CustomerMergedV1(merged="cust-1", into="cust-2", ts=T0 + 1000))

    report = run_once(settings)
    assert (report.entries, report.interactions, report.merges, report.shards) == (501, 500, 1, SHARDS)
    assert report.flushes >= 500 // 40 and report.dead == report.erased == report.deleted == 0
    assert_exactly_once_in_order(root, expected)
    assert read_interactions(root).num_rows == 500
    assert [(m["merged"], m["into"]) for m in read_merges(root).to_pylist()] == [("cust-1", "cust-2")]
    for shard in range(SHARDS):
        k = ShardKeys(shard)
        assert redis_sync.xlen(k.stream) == 0, "exported entries are trimmed"
        assert redis_sync.xpending(k.stream, GROUP)["pending"] == 0
        assert redis_sync.hget(k.checkpoint, "last_id") is not None
        assert not redis_sync.exists(k.lease), "the lease is let go"
    # file names carry the shard and the flush's stream-id range
    names = [p.rsplit("/", 1)[-1] for p in ParquetLog(root).files(INTERACTIONS)]
    assert all(n.startswith(("cs000_", "cs001_", "cs002_", "cs003_")) and n.count("_") == 2 for n in names)

    again = run_once(settings)
    assert (again.entries, again.files) == (0, 0)
    more = add_many(redis_sync, 30, start=500)
    assert run_once(settings).interactions == 30
    for c, evs in more.items():
        expected[c] += evs
    assert_exactly_once_in_order(root, expected)


# A child process that exports and SIGKILLs itself at a given stage of its second flush.
_CRASHING_EXPORTER = textwrap.dedent("""
    import asyncio, os, signal, sys
    import redis.asyncio as aioredis
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.recommender.workers.exporter import Exporter

    url, root, stage = sys.argv[1:4]
    settings = RecommenderSettings(redis_url=url, admin_token=os.environ["T_ADMIN"], token_secret=os.environ["T_SECRET"],
                                   history_dir=root, customer_shards=4, export_flush_rows=40)
    seen = []

    def fault(at):
        if at == stage:
            seen.append(at)
            if len(seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        r = aioredis.Redis.from_url(url)
        await Exporter(r, settings, fault=fault, lease_ttl_s=1.0).run_once()

    asyncio.run(main())
""")


def crash_exporter(redis_url: str, root: str, stage: str) -> None:
    env = {**os.environ, "T_ADMIN": ADMIN_TOKEN, "T_SECRET": TOKEN_SECRET, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _CRASHING_EXPORTER, redis_url, root, stage], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def flushes(expected: dict[str, list[str]], rows: int = 40) -> list[tuple[int, int]]:
    """(shard, entries) of each flush run_once makes, in order: shards in turn, full flushes first."""
    per_shard = Counter(customer_shard(c, SHARDS) for c, evs in expected.items() for _ in evs)
    out = []
    for shard in range(SHARDS):
        n = per_shard[shard]
        while n > 0:
            out.append((shard, min(rows, n)))
            n -= rows
    return out


def wait_for_lease_expiry(redis_sync) -> None:
    deadline = time.monotonic() + 10
    while any(redis_sync.exists(ShardKeys(s).lease) for s in range(SHARDS)):
        assert time.monotonic() < deadline, "a dead exporter's lease never expired"
        time.sleep(0.05)


def test_killed_between_writing_files_and_committing(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    expected = add_many(redis_sync, 300)
    (first_shard, first), (shard, second) = flushes(expected)[:2]
    crash_exporter(redis_url, root, "written")
    # the state the crash left: a committed flush, the files of a second one, its entries pending
    k = ShardKeys(shard)
    assert ShardKeys(first_shard).checkpoint in {key.decode() for key in redis_sync.keys("*checkpoint")}
    assert redis_sync.xpending(k.stream, GROUP)["pending"] == second
    assert len(raw_rows(root)) == first + second, "both flushes' files are on disk"
    wait_for_lease_expiry(redis_sync)

    report = run_once(settings_for(redis_url, root))
    assert report.uncommitted_removed >= 1 and report.committed_acked == 0
    assert_exactly_once_in_order(root, expected)


def test_killed_between_committing_and_acknowledging(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    expected = add_many(redis_sync, 300)
    _, (shard, second) = flushes(expected)[:2]
    crash_exporter(redis_url, root, "committed")
    k = ShardKeys(shard)
    checkpoint = redis_sync.hget(k.checkpoint, "last_id").decode()
    assert redis_sync.xpending(k.stream, GROUP)["pending"] == second, "the commit is recorded, the acks never came"
    wait_for_lease_expiry(redis_sync)

    report = run_once(settings_for(redis_url, root))
    assert report.committed_acked == second and report.uncommitted_removed == 0
    assert redis_sync.xrange(k.stream, min="-", max=checkpoint) == [], "trimmed up to the checkpoint"
    assert_exactly_once_in_order(root, expected)


class _Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the exporter handles it."""


def test_entries_deleted_by_an_erasure_after_delivery_are_acknowledged(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    settings = settings_for(redis_url, root, flush_rows=1000)
    same_shard = [c for c in (f"cust-{i}" for i in range(100)) if customer_shard(c, SHARDS) == 0][:3]
    expected = add_many(redis_sync, 60, customers=same_shard)  # the crash comes at shard 0's flush

    def crash(stage):
        raise _Crash()

    with pytest.raises(_Crash):
        run_once(settings, fault=crash)  # read and written, never committed
    gone = same_shard[1]
    stream = interactions_stream_key(customer_shard(gone, SHARDS))
    doomed = [i for i, f in redis_sync.xrange(stream) if gone.encode() in f[b"data"]]
    assert redis_sync.xdel(stream, *doomed) == 20

    report = run_once(settings)
    assert report.deleted == 20
    expected.pop(gone)
    assert_exactly_once_in_order(root, expected)
    assert redis_sync.xpending(stream, GROUP)["pending"] == 0


def test_rows_of_erased_customers_are_not_exported(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    erased_at = T0 + 100
    redis_sync.hset(ERASURES, erasure_digest("gone", KEY), repr(erased_at))
    for n in range(5):
        add(redis_sync, interaction(n, "gone", received_at=T0 + 50 + n))       # before the erasure
    add(redis_sync, interaction(5, "gone", received_at=erased_at + 1))           # a new life after it
    add(redis_sync, interaction(6, "kept"))
    add(redis_sync, CustomerMergedV1(merged="gone", into="kept", ts=T0 + 60))
    add(redis_sync, CustomerMergedV1(merged="other", into="kept", ts=T0 + 70))

    report = run_once(settings_for(redis_url, root))
    assert (report.erased, report.interactions, report.merges) == (6, 2, 1)
    assert sorted(read_interactions(root).column("event_id").to_pylist()) == ["ev-00005", "ev-00006"]
    assert [m["merged"] for m in read_merges(root).to_pylist()] == ["other"]


def test_garbage_goes_to_the_dead_letter_stream(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    c = "cust-dl"
    stream = interactions_stream_key(customer_shard(c, SHARDS))
    add(redis_sync, interaction(1, c))
    bad_json = redis_sync.xadd(stream, {"kind": "interaction", "v": "1", "data": "{not json"}).decode()
    bad_kind = redis_sync.xadd(stream, {"kind": "telepathy", "v": "1", "data": "{}"}).decode()
    invalid = redis_sync.xadd(stream, {"kind": "interaction", "v": "1",
                                       "data": interaction(2, c).model_dump_json().replace('"web"', '"pigeon"')}).decode()
    add(redis_sync, interaction(3, c))

    report = run_once(settings_for(redis_url, root))
    assert (report.dead, report.interactions, report.entries) == (3, 2, 5)
    dead = redis_sync.xrange(ShardKeys(customer_shard(c, SHARDS)).dead)
    assert [f[b"dead_from"].decode() for _, f in dead] == [bad_json, bad_kind, invalid]
    assert dead[0][1][b"data"] == b"{not json" and dead[1][1][b"kind"] == b"telepathy"
    assert all(f[b"dead_group"] == b"exporter" and f[b"dead_reason"] for _, f in dead)
    assert read_interactions(root).column("event_id").to_pylist() == ["ev-00001", "ev-00003"]
    assert redis_sync.xpending(stream, GROUP)["pending"] == 0
    assert run_once(settings_for(redis_url, root)).dead == 0, "dead-lettered once"


def test_a_shard_leased_by_another_exporter_is_left_alone(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    settings = settings_for(redis_url, root)
    expected = add_many(redis_sync, 100)
    held = ShardKeys(2)
    redis_sync.set(held.lease, "someone-else", px=60_000)
    report = run_once(settings)
    assert (report.shards_busy, report.shards) == (1, SHARDS - 1)
    assert redis_sync.xlen(held.stream) > 0 and redis_sync.get(held.lease) == b"someone-else"
    redis_sync.delete(held.lease)
    run_once(settings)
    assert_exactly_once_in_order(root, expected)


def test_two_exporters_at_once_never_duplicate(redis_sync, redis_url, tmp_path):
    """Two processes' worth of exporters: both draining at once, then a pair of followers with a
    producer still writing while one of them stops and the other takes its shards over."""
    root = str(tmp_path / "history")
    settings = settings_for(redis_url, root, flush_rows=25, flush_s=0.2)
    expected = add_many(redis_sync, 400)

    async def both_once():
        r = aioredis.Redis.from_url(redis_url)
        try:
            return await asyncio.gather(Exporter(r, settings).run_once(), Exporter(r, settings).run_once())
        finally:
            await r.aclose()

    a, b = asyncio.run(both_once())
    assert a.entries + b.entries == 400 and a.entries and b.entries, "both worked, on different shards"
    assert a.shards_busy + b.shards_busy >= 1, "the two met on a shard"
    assert_exactly_once_in_order(root, expected)

    async def followers():
        r = aioredis.Redis.from_url(redis_url)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        ta = asyncio.create_task(Exporter(r, settings, lease_ttl_s=1.0).run_forever(stop_a, idle_s=0.02))
        tb = asyncio.create_task(Exporter(r, settings, lease_ttl_s=1.0).run_forever(stop_b, idle_s=0.02))
        n = 400
        for _ in range(12):
            for c, evs in add_many(redis_sync, 25, start=n).items():
                expected[c] += evs
            n += 25
            await asyncio.sleep(0.05)
        stop_a.set()  # a lets its shards go; b takes them within a lease period
        ra = await ta
        for c, evs in add_many(redis_sync, 100, start=n).items():
            expected[c] += evs
        deadline = time.monotonic() + 15
        while sum(redis_sync.xlen(ShardKeys(s).stream) for s in range(SHARDS)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop_b.set()
        rb = await tb
        await r.aclose()
        return ra, rb

    ra, rb = asyncio.run(followers())
    assert ra.entries + rb.entries == 400 and rb.entries > 0
    assert_exactly_once_in_order(root, expected)


def test_run_forever_flushes_by_time(redis_sync, redis_url, tmp_path):
    root = str(tmp_path / "history")
    settings = settings_for(redis_url, root, flush_rows=10_000, flush_s=0.3)
    expected = add_many(redis_sync, 7)

    async def follow():
        r = aioredis.Redis.from_url(redis_url)
        stop = asyncio.Event()
        task = asyncio.create_task(Exporter(r, settings).run_forever(stop, idle_s=0.02))
        deadline = time.monotonic() + 10
        while not ParquetLog(root).files(INTERACTIONS):
            assert time.monotonic() < deadline, "nothing flushed after export_flush_s"
            await asyncio.sleep(0.05)
        stop.set()
        report = await task
        await r.aclose()
        return report

    report = asyncio.run(follow())
    assert report.interactions == 7
    assert_exactly_once_in_order(root, expected)


def test_fsspec_memory_root(redis_sync, redis_url):
    root = f"memory://vicino-test-{uuid.uuid4().hex}/history"
    try:
        expected = add_many(redis_sync, 90)
        assert run_once(settings_for(redis_url, root)).interactions == 90
        assert_exactly_once_in_order(root, expected)
        assert read_interactions(root).num_rows == 90
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory:/"), recursive=True)


def test_cli_export_and_apply_erasures(redis_sync, redis_url, tmp_path, monkeypatch):
    from vicino.services.cli.history import history_app

    root = str(tmp_path / "history")
    expected = add_many(redis_sync, 50)
    for k, v in {"REDIS_URL": redis_url, "ADMIN_TOKEN": ADMIN_TOKEN, "TOKEN_SECRET": TOKEN_SECRET,
                 "HISTORY_DIR": root, "CUSTOMER_SHARDS": str(SHARDS)}.items():
        monkeypatch.setenv(f"VICINO_{k}", v)
    out = CliRunner().invoke(history_app, ["export"])
    assert out.exit_code == 0, out.output
    assert "exported 50 interactions" in out.output
    assert_exactly_once_in_order(root, expected)

    # erased after the export: the rewrite takes the customer's rows out of the files
    redis_sync.hset(ERASURES, erasure_digest("cust-4", KEY), repr(T0 + 10_000))
    out = CliRunner().invoke(history_app, ["apply-erasures"])
    assert out.exit_code == 0, out.output
    gone = len(expected.pop("cust-4"))
    assert f"{gone:,} rows dropped" in out.output
    assert_exactly_once_in_order(root, expected)


def test_on_a_redis_cluster(tmp_path):
    from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
    from redis.cluster import RedisCluster

    with EmbeddedRedisCluster(tmp_path / "cluster") as cluster:
        rc = RedisCluster.from_url(cluster.url)
        root = str(tmp_path / "history")
        settings = settings_for(cluster.url, root)
        rc.hset(ERASURES, erasure_digest("cust-3", KEY), repr(T0 + 10_000))
        expected = add_many(rc, 200)
        expected.pop("cust-3")

        async def once():
            r = open_async(cluster.url)
            try:
                return await Exporter(r, settings).run_once()
            finally:
                await r.aclose()

        report = asyncio.run(once())
        assert report.shards == SHARDS and report.erased == 200 // 12 + (3 < 200 % 12)
        assert_exactly_once_in_order(root, expected)
        rc.close()
