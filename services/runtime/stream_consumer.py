"""A consumer-group reader over several Redis streams, for every background worker.

Acknowledges an entry only after its handler returned; reclaims entries that a dead consumer
left pending for longer than `claim_idle_ms`; moves an entry that can never be handled (its
handler raised `PoisonEntry`, or failed `max_attempts` times, with a growing pause between
attempts) to a dead-letter stream in the
same hash tag, then acknowledges it, so one bad entry never stops a worker. A handler that
raises `NotYet` keeps its entry pending, without counting an attempt, until the pause it names
has passed (a push waiting for its retry time). A handler that meets Redis or another service
unavailable (`UNAVAILABLE`) keeps its entry pending too, backing off, without counting an
attempt: a failover must not turn good entries into dead letters. Streams are read one at a time: on a Redis
Cluster they live in different slots. With `concurrency` > 1, `run_forever` keeps up to that many
handlers running at once (their entries must not depend on each other's order), reads more as
they finish and acknowledges in batches: one slow entry holds one slot, never the others.

A round that fails (Redis away, a Cluster failover under way) is counted and followed by a
growing pause (to `MAX_ROUND_BACKOFF_S`); after `max_failed_rounds` failures in a row the
consumer reports itself unhealthy (`healthy` is False) until a round succeeds, so that the
process's readiness says it cannot make progress and an orchestrator restarts it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Awaitable, Callable, TypeVar

from redis.exceptions import (BusyLoadingError, ClusterDownError, ReadOnlyError, ResponseError, SlotNotCoveredError,
                              TryAgainError)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..kernel.problems import Unavailable

log = logging.getLogger("vicino.stream_consumer")

PENDING_SCAN_S = 0.5  # with concurrency: how often own pending and reclaimable entries are looked for
MAX_ROUND_BACKOFF_S = 1.0  # the longest pause after a failed round: a recovered Redis is used within a second

Handler = Callable[[str, str, dict], Awaitable[None]]  # (stream, entry id, fields)
# What a handler meets when Redis or another service is away (a restart, a Cluster failover): the
# entry is good, the world is not; it waits (backing off) without counting towards dead-lettering
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, ReadOnlyError,
               BusyLoadingError, SlotNotCoveredError, Unavailable)
MAX_UNAVAILABLE_BACKOFF_S = 5.0


class PoisonEntry(Exception):
    """The entry is malformed or can never be handled: dead-letter it."""


class NotYet(Exception):
    """Leave the entry pending and offer it again after `delay_s` (not a failure)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"not before {delay_s:.3f} s")
        self.delay_s = delay_s


T = TypeVar("T")


def decode_entry(parse: Callable[[dict], T], fields: dict, what: str) -> T:
    """A stream entry as its contract model, or `PoisonEntry` naming what it is not (pydantic's
    ValidationError is a ValueError)."""
    try:
        return parse(fields)
    except (TypeError, ValueError) as e:
        raise PoisonEntry(f"not a {what}: {str(e)[:300]}") from None


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


class StreamConsumer:
    def __init__(self, redis, streams: list[str], group: str, consumer: str, handler: Handler, *,
                 dead_letter: Callable[[str], str], batch: int = 200, claim_idle_ms: int = 30_000,
                 max_attempts: int = 5, idle_sleep_s: float = 0.05, retry_base_s: float = 0.5,
                 concurrency: int = 1, max_failed_rounds: int = 20) -> None:
        self._r = redis
        self.streams = streams
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.dead_letter = dead_letter
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.max_attempts = max_attempts
        self.idle_sleep_s = idle_sleep_s
        self.retry_base_s = retry_base_s
        self._attempts: dict[tuple[str, str], int] = {}
        self._retry_at: dict[tuple[str, str], float] = {}
        self._waits: dict[tuple[str, str], int] = {}  # rounds an entry waited for Redis or a service
        self.concurrency = concurrency
        self._pending_cursor: dict[str, str] = {}
        self._ready = False
        self.handled = 0
        self.dead = 0
        self.max_failed_rounds = max_failed_rounds
        self.failed_rounds = 0             # since start (the metric)
        self.failed_rounds_in_a_row = 0    # since the last round that succeeded (the health)
        self.last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.failed_rounds_in_a_row < self.max_failed_rounds

    def _round_failed(self, e: Exception) -> float:
        """Counts a failed round; returns the pause before the next."""
        self.failed_rounds += 1
        self.failed_rounds_in_a_row += 1
        self.last_error = repr(e)[:300]
        log.warning("stream consumer round failed", extra={"fields": {
            "group": self.group, "in_a_row": self.failed_rounds_in_a_row, "error": self.last_error}})
        return min(0.05 * 2 ** min(self.failed_rounds_in_a_row, 8), MAX_ROUND_BACKOFF_S)

    def _round_succeeded(self) -> None:
        if self.failed_rounds_in_a_row:
            log.info("stream consumer recovered", extra={"fields": {
                "group": self.group, "after_failed_rounds": self.failed_rounds_in_a_row}})
        self.failed_rounds_in_a_row = 0

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self._r.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._ready = True

    async def run_once(self) -> int:
        """Handles what is available now (own pending first, then reclaimed, then new); returns
        how many entries were acknowledged."""
        if not self._ready:
            await self.ensure_groups()
        done = 0
        for stream in self.streams:
            for entries in (await self._own_pending(stream), await self._reclaim(stream), await self._new(stream)):
                if self.concurrency == 1:
                    for entry_id, fields in entries:
                        if await self._handle(stream, _s(entry_id), fields):
                            await self._r.xack(stream, self.group, _s(entry_id))
                            done += 1
                    continue
                for i in range(0, len(entries), self.concurrency):
                    chunk = entries[i:i + self.concurrency]
                    acked = await asyncio.gather(*(self._handle(stream, _s(eid), f) for eid, f in chunk))
                    ids = [_s(eid) for (eid, _), ok in zip(chunk, acked) if ok]
                    if ids:
                        await self._r.xack(stream, self.group, *ids)
                        done += len(ids)
        return done

    async def run_forever(self, stop: asyncio.Event) -> None:
        if self.concurrency > 1:
            await self._run_pool(stop)
            return
        while not stop.is_set():
            pause = self.idle_sleep_s
            try:
                n = await self.run_once()
                self._round_succeeded()
            except Exception as e:  # Redis restarting, a failover: keep the worker alive
                pause = self._round_failed(e)
                n = 0
            if n == 0:
                try:
                    await asyncio.wait_for(stop.wait(), pause)
                except asyncio.TimeoutError:
                    pass

    async def _run_pool(self, stop: asyncio.Event) -> None:
        """Up to `concurrency` handlers in flight across every stream; each entry is acknowledged
        (in batches) as soon as its own handler is done."""
        inflight: dict[tuple[str, str], asyncio.Task] = {}
        acks: dict[str, list[str]] = defaultdict(list)

        async def one(stream: str, entry_id: str, fields) -> None:
            try:
                if await self._handle(stream, entry_id, fields):
                    acks[stream].append(entry_id)
            finally:
                inflight.pop((stream, entry_id), None)

        next_scan = 0.0
        while not stop.is_set():
            started = 0
            pause = self.idle_sleep_s
            try:
                if not self._ready:
                    await self.ensure_groups()
                await self._flush_acks(acks)
                now = time.monotonic()
                # entries waiting for their time and a dead consumer's are looked for now and then;
                # new ones every round (a read per stream costs as much CPU as a handler)
                scan = now >= next_scan
                if scan:
                    next_scan = now + PENDING_SCAN_S
                for stream in self.streams:
                    for read in (self._own_pending, self._reclaim, self._new) if scan else (self._new,):
                        free = self.concurrency - len(inflight)
                        if free <= 0:
                            break
                        for entry_id, fields in await read(stream, min(free, self.batch)):
                            key = (stream, _s(entry_id))
                            if key in inflight or self._retry_at.get(key, 0.0) > now:
                                continue  # running, or waiting for its time
                            inflight[key] = asyncio.create_task(one(stream, key[1], fields))
                            started += 1
                self._round_succeeded()
            except Exception as e:  # Redis restarting, a failover: keep the worker alive
                pause = self._round_failed(e)
            stopper = asyncio.ensure_future(stop.wait())
            if started == 0:  # nothing to read: a moment, or until a handler finishes
                await asyncio.wait(list(inflight.values()) + [stopper], timeout=pause,
                                   return_when=asyncio.FIRST_COMPLETED)
            while len(inflight) > self.concurrency // 2 and not stop.is_set():
                # read again when half the slots are free, not on every completion
                await asyncio.wait(list(inflight.values()) + [stopper], timeout=PENDING_SCAN_S,
                                   return_when=asyncio.FIRST_COMPLETED)
                if time.monotonic() >= next_scan:
                    break
            stopper.cancel()
        if inflight:  # let the running handlers finish (they record their outcome), then ack
            await asyncio.wait(list(inflight.values()), timeout=30)
        try:
            await self._flush_acks(acks)
        except Exception:  # unacknowledged entries are redelivered: handlers are idempotent
            log.exception("final acknowledgement failed", extra={"fields": {"group": self.group}})

    async def _flush_acks(self, acks: dict[str, list[str]]) -> None:
        for stream in list(acks):
            ids = acks.pop(stream)
            if ids:
                try:
                    await self._r.xack(stream, self.group, *ids)
                except Exception:
                    acks[stream].extend(ids)  # keep them for the next round
                    raise

    async def _own_pending(self, stream: str, count: int | None = None) -> list:
        # entries this consumer read before a crash or a failed attempt, a page per round (a
        # cursor walks the list, so that entries waiting for their time never hide the others)
        cursor = self._pending_cursor.get(stream, "0")
        count = count or self.batch
        reply = await self._r.xreadgroup(self.group, self.consumer, {stream: cursor}, count=count)
        entries = reply[0][1] if reply else []
        self._pending_cursor[stream] = _s(entries[-1][0]) if len(entries) == count else "0"
        return entries

    async def _reclaim(self, stream: str, count: int | None = None) -> list:
        reply = await self._r.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms, "0-0",
                                         count=count or self.batch)
        return [e for e in reply[1] if e is not None] if reply else []

    async def _new(self, stream: str, count: int | None = None) -> list:
        reply = await self._r.xreadgroup(self.group, self.consumer, {stream: ">"}, count=count or self.batch)
        return reply[0][1] if reply else []

    async def _handle(self, stream: str, entry_id: str, fields: dict | None) -> bool:
        """True when the entry is done with (handled or dead-lettered) and may be acknowledged."""
        if not fields:  # deleted after delivery (an erasure): nothing to do
            return True
        key = (stream, entry_id)
        if self._retry_at.get(key, 0.0) > time.monotonic():
            return False  # failed a moment ago: its backoff has not elapsed
        try:
            await self.handler(stream, entry_id, fields)
        except NotYet as e:
            self._retry_at[key] = time.monotonic() + max(0.0, e.delay_s)
            return False
        except PoisonEntry as e:
            await self._bury(stream, entry_id, fields, str(e))
        except UNAVAILABLE as e:
            waits = self._waits.get(key, 0) + 1
            self._waits[key] = waits
            self._retry_at[key] = time.monotonic() + min(self.retry_base_s * 2 ** min(waits - 1, 8),
                                                         MAX_UNAVAILABLE_BACKOFF_S)
            log.warning("entry waits for an unavailable dependency", extra={"fields": {
                "stream": stream, "id": entry_id, "waits": waits, "error": repr(e)[:300]}})
            return False
        except Exception as e:
            n = self._attempts.get(key, 0) + 1
            self._attempts[key] = n
            if n < self.max_attempts:
                # back off (0.5 s, 1 s, 2 s, ...): a dependency that is briefly away must not turn
                # good entries into dead letters within a second
                self._retry_at[key] = time.monotonic() + min(self.retry_base_s * 2 ** (n - 1), 60.0)
                # the error's class only: its message may name a customer (the dead letter, which an
                # erasure clears, keeps the whole reason)
                log.warning("entry failed; will retry", extra={"fields": {"stream": stream, "id": entry_id,
                                                                          "attempt": n, "error": type(e).__name__}})
                return False
            await self._bury(stream, entry_id, fields, f"failed {n} times: {e!r}")
        self._attempts.pop(key, None)
        self._waits.pop(key, None)
        self._retry_at.pop(key, None)
        self.handled += 1
        return True

    async def _bury(self, stream: str, entry_id: str, fields: dict, reason: str) -> None:
        self.dead += 1
        log.error("entry dead-lettered", extra={"fields": {"stream": stream, "id": entry_id,
                                                          "reason": reason.split(":", 1)[0]}})
        await self._r.xadd(self.dead_letter(stream), {**{_s(k): v for k, v in fields.items()},
                                                      "dead_reason": reason[:500], "dead_from": entry_id,
                                                      "dead_group": self.group}, maxlen=100_000, approximate=True)


class ConsumerCollector:
    """Prometheus collector of a process's consumers: failed rounds and dead-lettered entries
    (counters) and health."""

    def __init__(self, consumers: list[StreamConsumer]) -> None:
        self.consumers = consumers

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        failed = CounterMetricFamily("vicino_consumer_failed_rounds", "consumer rounds that failed (Redis away, a "
                                     "failover)", labels=["group"])
        healthy = GaugeMetricFamily("vicino_consumer_healthy", "1 while fewer than max_failed_rounds rounds in a row "
                                    "failed", labels=["group"])
        dead = CounterMetricFamily("vicino_consumer_dead_lettered", "entries this process moved to a dead-letter "
                                   "stream (malformed, or failed max_attempts times)", labels=["group"])
        for c in self.consumers:
            failed.add_metric([c.group], c.failed_rounds)
            healthy.add_metric([c.group], 1.0 if c.healthy else 0.0)
            dead.add_metric([c.group], c.dead)
        yield failed
        yield healthy
        yield dead


def consumer_check(consumers: list[StreamConsumer]) -> str:
    """A readiness check: "ok", or what is failing."""
    bad = [c for c in consumers if not c.healthy]
    if not bad:
        return "ok"
    return "; ".join(f"{c.group}: {c.failed_rounds_in_a_row} rounds failed in a row ({c.last_error})" for c in bad)
