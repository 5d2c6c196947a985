"""How far behind each consumer group of this process is, read from Redis when /metrics is scraped.

Per (stream, group) that the process consumes: the entries not yet delivered to the group (XINFO
GROUPS `lag`), the entries delivered but not acknowledged (`pending`), and the age of the oldest
pending entry (the XPENDING summary's smallest id is its creation time in ms); per stream, how many
entries were trimmed while a group still needed them (the counter that housekeeping, at the hard
cap, and a producer, at its last-resort cap, keep beside the stream:
`kernel.contracts.streams.trimmed_unconsumed_key`); a scrape that sees it grow logs a warning. A
scrape costs one pipeline of non-blocking reads (on a Cluster, redis-py's cluster pipeline sends
each node its keys' commands together) and is bounded by a timeout: a scrape that cannot read
Redis shows no lag samples and counts the failure, it never hangs /metrics.
"""
from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..kernel.contracts.streams import trimmed_unconsumed_key

log = logging.getLogger("vicino.stream_lag")

READ_TIMEOUT_S = 2.0


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


class StreamLagCollector:
    """`refresh()` (async, before each scrape) reads Redis; `collect()` (sync, as prometheus_client
    calls it) yields what the last refresh read."""

    def __init__(self, redis, groups: list[tuple[str, str]], *, clock=time.time,
                 timeout_s: float = READ_TIMEOUT_S) -> None:
        self._r = redis
        self.groups = sorted(set(groups))               # (stream, group)
        self.streams = sorted({s for s, _ in self.groups})
        self._clock = clock
        self._timeout_s = timeout_s
        self._rows: list[tuple[str, str, float | None, int, float]] = []
        self._trimmed: dict[str, int] = {}
        self._trimmed_seen: dict[str, int] = {}  # survives failed reads: a growth is told once
        self.failed_reads = 0

    async def refresh(self) -> None:
        try:
            await asyncio.wait_for(self._read(), self._timeout_s)
        except Exception as e:  # a scrape reports what it can; Redis away shows as missing samples
            self.failed_reads += 1
            self._rows, self._trimmed = [], {}
            log.warning("stream lag not read", extra={"fields": {"error": repr(e)[:300]}})

    async def _read(self) -> None:
        pipe = self._r.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xinfo_groups(stream)
            pipe.get(trimmed_unconsumed_key(stream))
        for stream, group in self.groups:
            pipe.xpending(stream, group)
        replies = await pipe.execute(raise_on_error=False)
        now_ms = self._clock() * 1000
        infos: dict[tuple[str, str], dict] = {}
        trimmed: dict[str, int] = {}
        for i, stream in enumerate(self.streams):
            groups, count = replies[2 * i], replies[2 * i + 1]
            if isinstance(groups, Exception):  # no such key: the stream does not exist yet
                groups = []
            for info in groups:
                info = {_s(k): v for k, v in info.items()}
                infos[(stream, _s(info["name"]))] = info
            trimmed[stream] = int(count) if count is not None and not isinstance(count, Exception) else 0
        rows = []
        for j, (stream, group) in enumerate(self.groups):
            info = infos.get((stream, group))
            if info is None:  # the group does not exist yet (its consumer never started)
                continue
            summary = replies[2 * len(self.streams) + j]
            oldest = summary.get("min") if isinstance(summary, dict) else None
            age_s = max(0.0, (now_ms - _id_ms(_s(oldest))) / 1000) if oldest else 0.0
            lag = info.get("lag")
            rows.append((stream, group, None if lag is None else float(lag), int(info.get("pending") or 0), age_s))
        self._rows, self._trimmed = rows, trimmed
        for stream, n in trimmed.items():
            seen = self._trimmed_seen.get(stream)
            if seen is not None and n > seen:
                log.warning("stream entries trimmed before every consumer group read them", extra={"fields": {
                    "stream": stream, "trimmed": n - seen, "trimmed_total": n,
                    "groups": [g for s, g in self.groups if s == stream]}})
            self._trimmed_seen[stream] = n

    def collect(self):
        lag = GaugeMetricFamily("vicino_stream_group_lag", "entries of the stream not yet delivered to the consumer "
                                "group (XINFO GROUPS lag; absent when Redis cannot tell)", labels=["stream", "group"])
        pending = GaugeMetricFamily("vicino_stream_group_pending", "entries delivered to the group but not "
                                    "acknowledged", labels=["stream", "group"])
        age = GaugeMetricFamily("vicino_stream_group_oldest_pending_age_seconds", "age of the group's oldest "
                                "pending entry (from its id), 0 when nothing is pending", labels=["stream", "group"])
        for stream, group, n, p, a in self._rows:
            if n is not None:
                lag.add_metric([stream, group], n)
            pending.add_metric([stream, group], p)
            age.add_metric([stream, group], a)
        trimmed = CounterMetricFamily("vicino_stream_trimmed_unconsumed", "entries trimmed at the hard cap while "
                                      "a consumer group still needed them (kept in Redis by the housekeeping)",
                                      labels=["stream"])
        for stream, n in sorted(self._trimmed.items()):
            trimmed.add_metric([stream], n)
        failed = CounterMetricFamily("vicino_stream_lag_read_failures", "scrapes that could not read the consumer "
                                     "groups' state from Redis")
        failed.add_metric([], self.failed_reads)
        yield from (lag, pending, age, trimmed, failed)
