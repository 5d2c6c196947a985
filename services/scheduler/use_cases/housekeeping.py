"""The scheduler's own jobs: trimming the streams of what every consumer is done with (and of
what is past its retention), and dealing with stuck entries and departed consumers. Both walk
the published stream registry (kernel.contracts.streams); no service is imported."""
from __future__ import annotations

import time
from collections import Counter

from vicino.services.kernel.contracts.streams import STREAM_FAMILIES, StreamFamily, dead_letter_of
from vicino.services.kernel.jobs import JobContext, JobDefinition

from ..adapters.stream_admin import StreamAdmin
from ..domain.stream_housekeeping import (consumed_below, departed_consumers, past_hard_cap, stuck_entries,
                                          trim_bound)
from ..settings import SchedulerSettings

PENDING_PAGE = 1000


def _streams(family: StreamFamily, settings: SchedulerSettings) -> list[str]:
    return family.keys(getattr(settings, family.shards))


async def trim_streams(ctx: JobContext, settings: SchedulerSettings, now: float | None = None) -> dict:
    admin = StreamAdmin(ctx.redis)
    now = time.time() if now is None else now
    kpi_keep = settings.kpi_retention_days * 86_400
    dead_keep = settings.dead_letter_retention_days * 86_400
    trimmed: Counter = Counter()
    unconsumed: Counter = Counter()  # entries trimmed at the hard cap although a group needed them
    kept_for: dict[str, str] = {}
    work = [(f, s) for f in STREAM_FAMILIES for s in _streams(f, settings)]
    for done, (family, stream) in enumerate(work):
        ctx.progress("streams", done, len(work))
        if not await admin.exists(stream):
            continue
        consumed, why = None, None
        if family.groups:
            consumed, why = consumed_below(await admin.groups(stream), family.groups)
            if consumed is None:
                kept_for[family.name] = why
        keep_s = kpi_keep if family.keep == "kpi_retention" else None
        if family.groups and consumed is None:
            minid = None
        else:
            minid = trim_bound(consumed, keep_s, now)
        if minid is not None:
            trimmed[family.name] += await admin.trim(stream, minid)
        if family.groups and past_hard_cap(await admin.length(stream), settings.stream_hard_cap):
            # what is left is needed by a group that is behind (or does not exist yet): dropping it
            # loses visits or pushes, so it is counted where the consumers' /metrics read it, and said
            lost = await admin.trim_to_length(stream, settings.stream_hard_cap)
            if lost:
                await admin.count_trimmed_unconsumed(stream, lost)
                unconsumed[family.name] += lost
                ctx.log.warning("stream trimmed at its hard cap while consumer groups still needed the entries",
                                extra={"fields": {"stream": stream, "trimmed": lost,
                                                  "hard_cap": settings.stream_hard_cap,
                                                  "groups": {g.name: g.last_delivered_id
                                                             for g in await admin.groups(stream)},
                                                  **({"kept_for": why} if why else {})}})
        if family.groups:  # their dead letters, by age
            dead = dead_letter_of(stream)
            if await admin.exists(dead):
                trimmed[f"{family.name}:dead"] += await admin.trim(dead, trim_bound(None, dead_keep, now))
    ctx.progress("streams", len(work), len(work))
    return {"trimmed": {k: n for k, n in trimmed.items() if n}, "streams": len(work),
            **({"kept": kept_for} if kept_for else {}),
            **({"trimmed_unconsumed": dict(unconsumed)} if unconsumed else {})}


async def reclaim_stuck(ctx: JobContext, settings: SchedulerSettings) -> dict:
    admin = StreamAdmin(ctx.redis)
    stuck_ms = int(settings.stuck_after_s * 1000)
    buried: Counter = Counter()
    waiting: Counter = Counter()
    oldest_wait_s: dict[str, float] = {}
    removed = 0
    for family in STREAM_FAMILIES:
        for stream in _streams(family, settings):
            if not family.groups or not await admin.exists(stream):
                continue
            present = {g.name for g in await admin.groups(stream)}
            for group in family.groups:
                if group not in present:
                    continue
                pending = await admin.pending(stream, group, stuck_ms, PENDING_PAGE)
                bury, wait = stuck_entries(pending, stuck_after_ms=stuck_ms, max_deliveries=settings.max_deliveries)
                for entry in bury:
                    reason = f"stuck: delivered {entry.deliveries} times, never acknowledged"
                    if await admin.bury(stream, group, dead_letter_of(stream), entry, reason):
                        buried[group] += 1
                        ctx.log.warning("stuck stream entry dead-lettered", extra={"fields": {
                            "stream": stream, "group": group, "id": entry.entry_id, "deliveries": entry.deliveries}})
                if wait:
                    waiting[group] += len(wait)
                    oldest_wait_s[group] = max(oldest_wait_s.get(group, 0.0), max(p.idle_ms for p in wait) / 1000)
                for name in departed_consumers(await admin.consumers(stream, group),
                                               int(settings.consumer_idle_s * 1000)):
                    await admin.delete_consumer(stream, group, name)
                    removed += 1
    if waiting:
        # entries a live consumer will reclaim by itself; if they keep waiting, no consumer runs
        ctx.log.warning("stream entries pending past stuck_after_s", extra={"fields": {
            "waiting": dict(waiting), "oldest_idle_s": oldest_wait_s}})
    return {"dead_lettered": dict(buried), "waiting": dict(waiting), "oldest_waiting_s": oldest_wait_s,
            "consumers_removed": removed}


def housekeeping_jobs(settings: SchedulerSettings) -> list[JobDefinition]:
    async def trim(ctx: JobContext) -> dict:
        return await trim_streams(ctx, settings)

    async def reclaim(ctx: JobContext) -> dict:
        return await reclaim_stuck(ctx, settings)

    return [
        JobDefinition("trim_streams", "trim the event, push-job, decision and receipt streams of what every consumer "
                      "has acknowledged and of what is past its retention (and dead letters past theirs)",
                      "every 15m", trim, long=True),
        JobDefinition("reclaim_stuck", "dead-letter stream entries delivered too often without an acknowledgement; "
                      "remove departed consumers; report entries waiting too long", "every 5m", reclaim),
    ]
