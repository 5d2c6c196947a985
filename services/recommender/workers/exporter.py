"""The exporter: moves every customer shard's interaction stream into the Parquet log, at least
once and in stream order (so in order per customer), and never twice even across crashes.

Per shard, under a lease that keeps any second exporter process off the shard:

1. read entries with the consumer group `exporter` (pending ones first, then new ones);
2. every `export_flush_rows` entries or `export_flush_s` seconds, write one file per date
   partition, named `cs<shard>_<first id>_<last id>` after the flush's stream-id range;
3. commit: one script that checks the lease is still ours, records the checkpoint (the flush's
   last id) and dead-letters the flush's unparseable entries;
4. XACK the flush's entries, then XTRIM MINID past the checkpoint.

A crash can stop this anywhere. So whoever takes the lease next first recovers, before reading:
entries still pending at or below the checkpoint were committed (acknowledge them, trim); files
whose whole range lies within what is still pending above the checkpoint were written but never
committed (delete them, with stale temporary files); then the pending entries are read again
from the start, in order, before any new one. Between a file's write and its commit every entry
of its range is in the pending list (acks only follow commits, trims only reach the checkpoint),
which is what tells an uncommitted file from a committed one, even when the checkpoint is lost
(a wiped Redis: nothing pending, nothing deleted). One gap is left to the readers, which keep
each event id once: a process that stalls mid-write for longer than its lease while another takes
the shard over has its commit refused and removes its files; if it dies before removing them,
they stay beside the new holder's.

All of one shard's keys share its hash tag (`{cs:NNN}`), so the scripts run on a Redis Cluster:

    vicino:{cs:NNN}:interactions:v1          the stream (written by ingestion)
    vicino:{cs:NNN}:exporter:lease           string: the holder's token, PX expiry, renewed
    vicino:{cs:NNN}:exporter:checkpoint      hash: last_id (stream id), committed_at (epoch s)
    vicino:{cs:NNN}:interactions:dead        stream: unparseable entries (their fields plus
                                             dead_reason, dead_from, dead_group)

One consumer name is used by every process: the lease makes its holder the only reader of the
shard, and the pending list it inherits is its predecessor's, readable with XREADGROUP from id 0
(no XAUTOCLAIM needed). The trim assumes the exporter is the only consumer group of these
streams. Rows of erased customers (the ERASURES register: received_at <= erased_at) and entries
deleted by an erasure after delivery are acknowledged and not written.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, fields
from typing import Callable

import redis.exceptions

from vicino.services.kernel.contracts.interactions import (CustomerMergedV1, InteractionV1, customer_shard_tag,
                                                    interactions_stream_key, parse_stream_entry)
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS, MERGES

from ..adapters.parquet_log import ParquetLog, interactions_table, merges_table
from ..adapters.erasure_register import ErasureRegister
from ..settings import RecommenderSettings
from ...runtime.redis_scripts import memory_guarded

log = logging.getLogger("vicino.recommender.exporter")

GROUP = "exporter"
CONSUMER = "exporter"
DEAD_MAXLEN = 100_000
_ACK_CHUNK = 1000

# KEYS: lease. ARGV: token, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, checkpoint, dead-letter stream. ARGV: token, last id, committed_at, dead maxlen,
# group, dead count, then per dead entry: its id, reason, field count n, n name/value pairs.
_COMMIT = memory_guarded("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'last_id', ARGV[2], 'committed_at', ARGV[3])
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local cmd = {'XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*'}
  local n = tonumber(ARGV[i + 2])
  for p = 1, 2 * n do cmd[#cmd + 1] = ARGV[i + 2 + p] end
  for _, v in ipairs({'dead_reason', ARGV[i + 1], 'dead_from', ARGV[i], 'dead_group', ARGV[5]}) do
    cmd[#cmd + 1] = v
  end
  redis.call(unpack(cmd))
  i = i + 3 + 2 * n
end
return 1
""")


class ShardKeys:
    __slots__ = ("shard", "stream", "lease", "checkpoint", "dead")

    def __init__(self, shard: int) -> None:
        tag = customer_shard_tag(shard)
        self.shard = shard
        self.stream = interactions_stream_key(shard)
        self.lease = f"vicino:{tag}:exporter:lease"
        self.checkpoint = f"vicino:{tag}:exporter:checkpoint"
        self.dead = f"vicino:{tag}:interactions:dead"


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _sid(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: str) -> str:
    ms, seq = _sid(entry_id)
    return f"{ms}-{seq + 1}"


def file_prefix(shard: int) -> str:
    return f"cs{shard:03d}_"


def flush_range(path: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The stream-id range in an exporter file's name, or None for files of others (imports)."""
    stem = path.rsplit("/", 1)[-1].removesuffix(".parquet")
    parts = stem.split("_")
    if len(parts) != 3 or not parts[0].startswith("cs"):
        return None
    return _sid(parts[1]), _sid(parts[2])


@dataclass
class ExportReport:
    shards: int = 0               # shards this exporter held and drained
    shards_busy: int = 0          # skipped: another exporter holds their lease
    entries: int = 0              # stream entries acknowledged after a commit
    interactions: int = 0         # rows written
    merges: int = 0               # merge rows written
    erased: int = 0               # rows of erased customers not written
    deleted: int = 0              # entries deleted from the stream (erasure) after delivery
    dead: int = 0                 # unparseable entries dead-lettered
    files: int = 0
    flushes: int = 0
    uncommitted_removed: int = 0  # files of interrupted flushes deleted at recovery
    committed_acked: int = 0      # pending entries of committed flushes acknowledged at recovery

    def add(self, other: "ExportReport") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class LeaseLost(Exception):
    """Another exporter holds the shard now: stop touching it, leave its entries pending."""


class _Shard:
    """What one exporter knows of a shard it holds."""

    def __init__(self, shard: int) -> None:
        self.keys = ShardKeys(shard)
        self.held = False
        self.renewed_at = 0.0
        self.cursor = "0"  # pending entries first (by id), then ">" for new ones
        self.buffer: list[tuple[str, dict]] = []
        self.buffer_since = 0.0

    def reset(self) -> None:
        self.held = False
        self.cursor = "0"
        self.buffer = []


class Exporter:
    """`fault(stage)` is called after the files of a flush are written ("written") and after its
    commit ("committed"); tests pass one that kills the process there."""

    def __init__(self, redis, settings: RecommenderSettings, *, log_root: str | None = None,
                 lease_ttl_s: float = 30.0, fault: Callable[[str], None] | None = None) -> None:
        self._r = redis
        self.shards = settings.customer_shards
        self.flush_rows = settings.export_flush_rows
        self.flush_s = settings.export_flush_s
        self.parquet = ParquetLog(log_root or settings.history_dir)
        self.erasure_key = settings.erasure_register_key()
        self.lease_ms = int(lease_ttl_s * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._fault = fault or (lambda stage: None)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._commit = redis.register_script(_COMMIT)

    # the two ways to run -------------------------------------------------------------------------

    async def run_once(self) -> ExportReport:
        """Exports everything available now from every shard not held by another exporter."""
        report = ExportReport()
        for n in range(self.shards):
            shard = _Shard(n)
            if not await self._acquire(shard):
                report.shards_busy += 1
                continue
            try:
                await self._recover(shard, report)
                while await self._read(shard):
                    if len(shard.buffer) >= self.flush_rows:
                        await self._flush(shard, report)
                if shard.buffer:
                    await self._flush(shard, report)
                report.shards += 1
            except LeaseLost:
                log.warning("exporter lease lost", extra={"fields": {"shard": n}})
            finally:
                await self._let_go(shard)
        return report

    async def run_forever(self, stop: asyncio.Event, idle_s: float = 0.2) -> ExportReport:
        """Holds as many shards as it can get and exports as entries arrive, flushing each shard
        every `export_flush_rows` entries or `export_flush_s` seconds; on `stop`, flushes what it
        has and lets the shards go."""
        report = ExportReport()
        shards = [_Shard(n) for n in range(self.shards)]
        next_acquire = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_acquire:
                    for shard in shards:
                        if not shard.held:
                            await self._guarded(shard, self._take(shard, report))
                    next_acquire = time.monotonic() + self.lease_ms / 3000
                busy = False
                for shard in (s for s in shards if s.held):
                    busy |= bool(await self._guarded(shard, self._step(shard, report)))
                if not busy:
                    try:
                        await asyncio.wait_for(stop.wait(), idle_s)
                    except asyncio.TimeoutError:
                        pass
            for shard in (s for s in shards if s.held and s.buffer):
                await self._guarded(shard, self._flush(shard, report))
        finally:
            for shard in shards:
                if shard.held:
                    await self._let_go(shard)
        return report

    async def _take(self, shard: _Shard, report: ExportReport) -> None:
        if await self._acquire(shard):
            await self._recover(shard, report)

    async def _step(self, shard: _Shard, report: ExportReport) -> int:
        got = await self._read(shard)
        if len(shard.buffer) >= self.flush_rows or (
                shard.buffer and time.monotonic() - shard.buffer_since >= self.flush_s):
            await self._flush(shard, report)
        return got

    async def _guarded(self, shard: _Shard, step):
        """Keeps a long-running exporter alive through a lost lease or a Redis/storage hiccup:
        the shard is let go with its entries still pending, and taken (and recovered) again later."""
        try:
            return await step
        except LeaseLost:
            log.warning("exporter lease lost", extra={"fields": {"shard": shard.keys.shard}})
        except (redis.exceptions.RedisError, OSError) as e:
            log.error("exporter shard step failed", extra={"fields": {"shard": shard.keys.shard, "error": repr(e)}})
            await self._let_go(shard)
        shard.reset()
        return 0

    # lease ---------------------------------------------------------------------------------------

    async def _acquire(self, shard: _Shard) -> bool:
        if not await self._r.set(shard.keys.lease, self.token, nx=True, px=self.lease_ms):
            return False
        shard.held = True
        shard.renewed_at = time.monotonic()
        return True

    async def _keep(self, shard: _Shard) -> None:
        """Renews the lease once a third of it has gone; raises LeaseLost if it is not ours."""
        if time.monotonic() - shard.renewed_at < self.lease_ms / 3000:
            return
        if not await self._renew(keys=[shard.keys.lease], args=[self.token, self.lease_ms]):
            raise LeaseLost()
        shard.renewed_at = time.monotonic()

    async def _let_go(self, shard: _Shard) -> None:
        try:
            await self._release(keys=[shard.keys.lease], args=[self.token])
        except redis.exceptions.RedisError:
            pass  # it expires on its own
        shard.reset()

    # recovery ------------------------------------------------------------------------------------

    async def _recover(self, shard: _Shard, report: ExportReport) -> None:
        k = shard.keys
        try:
            await self._r.xgroup_create(k.stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        checkpoint = await self._r.hget(k.checkpoint, "last_id")
        if checkpoint is not None:
            checkpoint = _s(checkpoint)
            while True:  # committed, but the process died before (all) its acks
                pending = await self._r.xpending_range(k.stream, GROUP, min="-", max=checkpoint, count=_ACK_CHUNK)
                if not pending:
                    break
                report.committed_acked += await self._r.xack(k.stream, GROUP, *[p["message_id"] for p in pending])
            await self._r.xtrim(k.stream, minid=_next_id(checkpoint), approximate=False)
        summary = await self._r.xpending(k.stream, GROUP)
        span = (_sid(_s(summary["min"])), _sid(_s(summary["max"]))) if summary["pending"] else None
        removed = await asyncio.to_thread(self._remove_uncommitted, k.shard, span)
        report.uncommitted_removed += removed
        if removed:
            log.info("removed files of an interrupted export", extra={"fields": {"shard": k.shard, "files": removed}})
        shard.cursor = "0"
        shard.buffer = []

    def _remove_uncommitted(self, shard: int, span: tuple[tuple[int, int], tuple[int, int]] | None) -> int:
        prefix = file_prefix(shard)
        doomed = []
        for kind in (INTERACTIONS, MERGES):
            self.parquet.remove(self.parquet.files(kind, f".{prefix}*"))  # temporary files of a killed write
            if span is None:
                continue
            for path in self.parquet.files(kind, f"{prefix}*.parquet"):
                r = flush_range(path)
                if r is not None and span[0] <= r[0] and r[1] <= span[1]:
                    doomed.append(path)
        return self.parquet.remove(doomed)

    # reading and flushing ------------------------------------------------------------------------

    async def _read(self, shard: _Shard) -> int:
        """Appends the next entries to the shard's buffer; returns how many (0: drained for now)."""
        await self._keep(shard)
        room = max(1, self.flush_rows - len(shard.buffer))
        while True:
            reply = await self._r.xreadgroup(GROUP, CONSUMER, {shard.keys.stream: shard.cursor}, count=room)
            entries = reply[0][1] if reply else []
            if entries or shard.cursor == ">":
                break
            shard.cursor = ">"  # the pending list is done: now the new entries
        if not entries:
            return 0
        if not shard.buffer:
            shard.buffer_since = time.monotonic()
        shard.buffer.extend((_s(i), f) for i, f in entries)
        if shard.cursor != ">":
            shard.cursor = _s(entries[-1][0])
        return len(entries)

    async def _flush(self, shard: _Shard, report: ExportReport) -> None:
        entries, shard.buffer = shard.buffer, []
        k = shard.keys
        first, last = entries[0][0], entries[-1][0]
        out = ExportReport(flushes=1, entries=len(entries))
        interactions: list[InteractionV1] = []
        merges: list[CustomerMergedV1] = []
        dead: list[tuple[str, dict, str]] = []
        for entry_id, f in entries:
            if not f:
                out.deleted += 1
                continue
            try:
                record = parse_stream_entry(f)
            except (ValueError, KeyError, TypeError) as e:
                dead.append((entry_id, f, f"not an interaction stream entry: {e}"[:500]))
                continue
            (interactions if isinstance(record, InteractionV1) else merges).append(record)
        interactions, merges = await self._without_erased(interactions, merges, out)
        out.interactions, out.merges, out.dead = len(interactions), len(merges), len(dead)

        await self._keep(shard)
        name = f"{file_prefix(k.shard)}{first}_{last}"
        paths = await asyncio.to_thread(self._write, name, interactions, merges)
        out.files = len(paths)
        self._fault("written")
        args: list = [self.token, last, repr(time.time()), DEAD_MAXLEN, GROUP, len(dead)]
        for entry_id, f, reason in dead:
            args += [entry_id, reason, len(f)]
            for field, value in f.items():
                args += [field, value]
        if not await self._commit(keys=[k.lease, k.checkpoint, k.dead], args=args):
            await asyncio.to_thread(self.parquet.remove, paths)  # the new holder exports these entries
            raise LeaseLost()
        self._fault("committed")
        for i in range(0, len(entries), _ACK_CHUNK):
            await self._r.xack(k.stream, GROUP, *[e[0] for e in entries[i:i + _ACK_CHUNK]])
        await self._r.xtrim(k.stream, minid=_next_id(last), approximate=False)
        for entry_id, _, reason in dead:
            log.error("interaction stream entry dead-lettered",
                      extra={"fields": {"stream": k.stream, "id": entry_id, "reason": reason}})
        report.add(out)

    async def _without_erased(self, interactions: list[InteractionV1], merges: list[CustomerMergedV1],
                              out: ExportReport) -> tuple[list[InteractionV1], list[CustomerMergedV1]]:
        ids = sorted({i.customer_id for i in interactions} | {m.merged for m in merges} | {m.into for m in merges})
        if not ids:
            return interactions, merges
        erased = await ErasureRegister(self._r, self.erasure_key).erased_among(ids)
        if not erased:
            return interactions, merges
        kept_i = [i for i in interactions if not (i.customer_id in erased and i.received_at <= erased[i.customer_id])]
        kept_m = [m for m in merges
                  if not any(c in erased and m.ts <= erased[c] for c in (m.merged, m.into))]
        out.erased = len(interactions) - len(kept_i) + len(merges) - len(kept_m)
        return kept_i, kept_m

    def _write(self, name: str, interactions: list[InteractionV1], merges: list[CustomerMergedV1]) -> list[str]:
        paths = []
        if interactions:
            paths += self.parquet.write_partitioned(INTERACTIONS, interactions_table(interactions), name)
        if merges:
            paths += self.parquet.write_partitioned(MERGES, merges_table(merges), name)
        return paths
