"""The kernel's stream consumer on a real Redis: ack after the handler, retries with backoff,
dead letters for what can never be handled, reclaim of a dead consumer's entries."""
from __future__ import annotations

import asyncio
import time

from vicino.services.runtime.redis_client import open_async
from vicino.services.runtime.stream_consumer import PoisonEntry, StreamConsumer

STREAM = "vicino:{t:000}:s"


def dead(stream: str) -> str:
    return stream + ":dead"


def run(redis_url, coro_fn):
    async def main():
        r = open_async(redis_url)
        try:
            return await coro_fn(r)
        finally:
            await r.aclose()
    return asyncio.run(main())


def test_a_failing_entry_is_retried_with_backoff_then_handled(redis_url, redis_sync):
    redis_sync.xadd(STREAM, {"n": "1"})
    calls: list[float] = []

    async def flaky(stream, entry_id, fields):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("briefly away")

    async def go(r):
        c = StreamConsumer(r, [STREAM], "g", "c1", flaky, dead_letter=dead, retry_base_s=0.05)
        deadline = time.monotonic() + 5
        while c.handled == 0 and time.monotonic() < deadline:
            await c.run_once()
            await asyncio.sleep(0.01)
        return c

    c = run(redis_url, go)
    assert c.handled == 1 and c.dead == 0 and len(calls) == 3
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1  # the pause doubles
    assert redis_sync.xpending(STREAM, "g")["pending"] == 0
    assert redis_sync.exists(dead(STREAM)) == 0


def test_poison_and_hopeless_entries_are_dead_lettered_and_the_rest_go_on(redis_url, redis_sync):
    for n in ("poison", "hopeless", "fine"):
        redis_sync.xadd(STREAM, {"n": n})
    seen = []

    async def handler(stream, entry_id, fields):
        n = fields[b"n"].decode()
        if n == "poison":
            raise PoisonEntry("not a valid entry")
        if n == "hopeless":
            raise RuntimeError("always fails")
        seen.append(n)

    async def go(r):
        c = StreamConsumer(r, [STREAM], "g", "c1", handler, dead_letter=dead, retry_base_s=0.01, max_attempts=3)
        deadline = time.monotonic() + 5
        while c.handled < 3 and time.monotonic() < deadline:
            await c.run_once()
            await asyncio.sleep(0.01)
        return c

    c = run(redis_url, go)
    assert seen == ["fine"] and c.dead == 2
    buried = {f[b"n"].decode(): f[b"dead_reason"].decode() for _id, f in redis_sync.xrange(dead(STREAM))}
    assert buried["poison"] == "not a valid entry" and buried["hopeless"].startswith("failed 3 times")
    assert redis_sync.xpending(STREAM, "g")["pending"] == 0


def test_entries_of_a_dead_consumer_are_reclaimed(redis_url, redis_sync):
    redis_sync.xadd(STREAM, {"n": "1"})
    redis_sync.xgroup_create(STREAM, "g", id="0")
    redis_sync.xreadgroup("g", "crashed", {STREAM: ">"})  # read, never acked
    seen = []

    async def handler(stream, entry_id, fields):
        seen.append(entry_id)

    async def go(r):
        c = StreamConsumer(r, [STREAM], "g", "c2", handler, dead_letter=dead, claim_idle_ms=50)
        await c.run_once()
        first = list(seen)
        await asyncio.sleep(0.1)
        await c.run_once()
        return first

    first = run(redis_url, go)
    assert first == [] and len(seen) == 1  # not while the other may still be working; after the idle time
    assert redis_sync.xpending(STREAM, "g")["pending"] == 0


def test_with_concurrency_one_slow_entry_holds_one_slot_not_the_others(redis_url, redis_sync):
    from vicino.services.runtime.stream_consumer import NotYet

    streams = [STREAM, "vicino:{t:001}:s"]
    for i in range(40):
        redis_sync.xadd(streams[i % 2], {"n": str(i)})
    done: dict[str, float] = {}
    waited: list[str] = []
    t0 = time.monotonic()

    async def handler(stream, entry_id, fields):
        n = fields[b"n"].decode()
        if n == "0":
            await asyncio.sleep(3.0)  # a provider that hangs
        if n == "1":
            raise PoisonEntry("never")
        if n == "2" and not waited:
            waited.append(n)
            raise NotYet(0.5)  # comes back after its pause, without counting as a failure
        done[n] = time.monotonic() - t0

    async def go(r):
        c = StreamConsumer(r, streams, "g", "c1", handler, dead_letter=dead, concurrency=8, batch=8)
        stop = asyncio.Event()
        task = asyncio.create_task(c.run_forever(stop))
        while len(done) < 38 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        others_at = time.monotonic() - t0
        stop.set()
        await task
        return c, others_at

    c, others_at = run(redis_url, go)
    assert set(done) == {str(i) for i in range(40)} - {"1"}
    assert max(t for n, t in done.items() if n != "0") < 2.0 <= done["0"]  # the rest did not wait for it
    assert done["2"] >= 0.5 and c.dead == 1
    for s in streams:
        assert redis_sync.xpending(s, "g")["pending"] == 0
    assert len(redis_sync.xrange(dead(streams[1]))) == 1  # entry 1 went to the second stream


def test_failure_logs_name_the_error_not_its_message(redis_url, redis_sync, caplog):
    """A handler's error may name a customer: the logs keep its class, the dead letter (which an
    erasure clears) the whole reason."""
    import logging

    caplog.set_level(logging.INFO)
    stream = "vicino:{t:001}:s"
    redis_sync.xadd(stream, {"n": "1"})

    async def failing(stream, entry_id, fields):
        raise LookupError("customer 'cust-in-a-message' is unknown")

    async def go(r):
        c = StreamConsumer(r, [stream], "g", "c1", failing, dead_letter=dead, retry_base_s=0.01, max_attempts=2)
        deadline = time.monotonic() + 5
        while c.dead == 0 and time.monotonic() < deadline:
            await c.run_once()
            await asyncio.sleep(0.02)
        return c

    from vicino.services.runtime.observability import JsonFormatter

    assert run(redis_url, go).dead == 1
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)  # the fields, as the logs show them
    assert "will retry" in text and "dead-lettered" in text
    assert "cust-in-a-message" not in text and "LookupError" in text
    [(_, fields)] = redis_sync.xrange(dead(stream))
    assert b"cust-in-a-message" in fields[b"dead_reason"]
