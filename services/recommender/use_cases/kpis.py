"""The KPIs of a period (GET /v1/kpis) and the daily roll-ups (the `kpi_rollup` job, GET
/v1/kpis/daily): read what was recorded, resolve merged customers, hand it to the pure
computation (domain/kpis.py).

What is read beyond the period: receipts up to the push's lifetime after it, the decided
customers' purchases and redemptions up to two attribution windows after it (conversion, then
repurchase), everyone's surveys, support contacts and replies up to REPLY_HORIZON_S after it (a
late answer), and, once the next period of the same length has ended, who was active in either
(retention: interactions from the log's customer column and the streams' tail, visits from the
decisions)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.problems import NotFound

from ..adapters.catalog_repository import CatalogRepository
from ..adapters.kpi_sources import KpiSources
from ..domain.kpis import ANSWER_IN_S, CARE_TYPES, CONVERSION_TYPES, compute_kpis
from ..domain.offers import Offer

DAY_S = 86_400
MAX_ROLLUPS_PER_RUN = 62
REPLY_HORIZON_S = 30 * DAY_S   # a support reply later than this after the period is not read: unanswered
MAX_MERGE_HOPS = 16


@dataclass(frozen=True)
class KpiQuery:
    start: float
    end: float
    window_s: float
    store_id: str | None = None
    offer_id: str | None = None
    campaign_id: str | None = None


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).date().isoformat()


def _day_start(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp()


class Kpis:
    def __init__(self, sources: KpiSources, catalog: CatalogRepository, clock: Clock, *, window_s: float,
                 push_ttl_s: float, retention_days: float) -> None:
        self.sources = sources
        self.catalog = catalog
        self.clock = clock
        self.window_s = window_s
        self.push_ttl_s = push_ttl_s
        self.retention_days = retention_days

    async def _offer_items(self) -> dict[str, frozenset[str]]:
        out = {}
        for raw in await self.catalog.all_offers():
            offer = Offer.model_validate_json(raw)
            out[offer.offer_id] = frozenset(offer.item_ids)
        return out

    async def report(self, q: KpiQuery, *, check_filters: bool = True, sources=None) -> dict:
        """`sources`: what to read from (default the service's; the roll-up passes a copy that
        reads the log once for all its days)."""
        src = sources or self.sources
        now = self.clock.now()
        after = q.end + (q.end - q.start)  # the end of the next period of the same length (retention)
        next_ended = now >= after
        # once the next period has ended, its decisions are read too: a store visit is activity
        decisions = await src.decisions(q.start, after if next_ended else q.end)
        offer_items = await self._offer_items()
        if check_filters:
            await self._check_filters(q, decisions, offer_items)
        # receipts of a decision follow it by at most the push's lifetime; conversions by the
        # window, and a repurchase by one more window after a conversion
        receipts = await src.receipts(q.start, q.end + self.push_ttl_s)
        survivors = await src.survivors(d.customer_id for d in decisions)
        lo, hi = q.start, q.end + 2 * q.window_s
        care_hi = q.end + REPLY_HORIZON_S
        log_merges = await asyncio.to_thread(src.logged_merges)
        for merged, into in log_merges.items():
            if into in survivors:
                survivors.setdefault(merged, survivors[into])
        canonical = _canonical(survivors, log_merges)
        wanted = set(survivors)
        events = await asyncio.to_thread(src.logged_events, lo, hi, wanted)
        events += await asyncio.to_thread(src.logged_care_events, q.start, care_hi)
        tail = await src.unexported(q.start)
        events += [e for e in tail if (e.type in CONVERSION_TYPES and e.customer_id in wanted and e.ts < hi)
                   or (e.type in CARE_TYPES and e.ts < care_hi)]
        activity = None
        if next_ended:
            active = await asyncio.to_thread(src.logged_active_customers, q.start, q.end)
            again = await asyncio.to_thread(src.logged_active_customers, q.end, after)
            active.update(e.customer_id for e in tail if e.ts < q.end)
            again.update(e.customer_id for e in tail if q.end <= e.ts < after)
            activity = ({canonical(c) for c in active}, {canonical(c) for c in again})
        decisions = [d if canonical(d.customer_id) == d.customer_id
                     else d.model_copy(update={"customer_id": canonical(d.customer_id)}) for d in decisions]
        events = [e if canonical(e.customer_id) == e.customer_id else replace(e, customer_id=canonical(e.customer_id))
                  for e in events]
        report = await asyncio.to_thread(compute_kpis, decisions, receipts, events, offer_items=offer_items,
                                         period=(q.start, q.end), window_s=q.window_s, store_id=q.store_id,
                                         offer_id=q.offer_id, campaign_id=q.campaign_id, activity=activity, now=now)
        report["notes"] = self._notes(q, report)
        return report

    def _notes(self, q: KpiQuery, report: dict) -> list[str]:
        notes = []
        now = self.clock.now()
        kept_from = now - self.retention_days * DAY_S
        if q.start < kept_from:
            notes.append(f"decisions and receipts before {_day(kept_from)} are past their retention "
                         f"(VICINO_KPI_RETENTION_DAYS={self.retention_days:g}) and may be trimmed; "
                         "GET /v1/kpis/daily keeps the daily roll-ups")
        if q.end + q.window_s > now and not report["empty"]:
            notes.append("the attribution window of the latest decisions has not closed yet: conversions "
                         "may still grow")
        if q.end + ANSWER_IN_S > now and report["responsiveness"] is not None:
            notes.append("support contacts of the last 24 h may still be answered in time")
        return notes

    async def _check_filters(self, q: KpiQuery, decisions, offer_items) -> None:
        if q.store_id is not None and not any(d.store_id == q.store_id for d in decisions) \
                and not await self.catalog.store_exists(q.store_id):
            raise NotFound(f"no store {q.store_id!r}: not among the stores nor in any decision of the period")
        if q.offer_id is not None and q.offer_id not in offer_items \
                and not any(d.offer_id == q.offer_id for d in decisions):
            raise NotFound(f"no offer {q.offer_id!r}: not in the catalogue nor in any decision of the period")

    # daily roll-ups -----------------------------------------------------------------------------

    def final_days(self, now: float) -> list[str]:
        """The days whose figures can no longer change (every receipt and conversion window
        closed) and whose decisions are still within retention, oldest first."""
        last_final = now - self.window_s - self.push_ttl_s - DAY_S
        first = now - self.retention_days * DAY_S + DAY_S
        days, t = [], _day_start(_day(first))
        while t <= last_final:
            days.append(_day(t))
            t += DAY_S
        return days

    async def roll_up(self, progress=None) -> dict:
        now = self.clock.now()
        done = await self.sources.rolled_days()
        todo = [d for d in self.final_days(now) if d not in done][-MAX_ROLLUPS_PER_RUN:]
        shared = _SharedLogReads(self.sources)  # consecutive days read overlapping spans of the log
        for i, day in enumerate(todo):
            if progress:
                progress("days", i, len(todo))
            start = _day_start(day)
            report = await self.report(KpiQuery(start, start + DAY_S, self.window_s), check_filters=False,
                                       sources=shared)
            report.pop("notes", None)
            await self.sources.save_day(day, {"date": day, "report": report, "rolled_at": now})
        if progress:
            progress("days", len(todo), len(todo))
        return {"rolled_up": todo, "already": len(done)}

    async def daily(self, first: str, last: str) -> list[dict]:
        return await self.sources.days(first, last)


class _SharedLogReads:
    """The KPI sources for a roll-up run: the Parquet log's care events and merges are read once
    (the widest span asked for, then cut per day), who was active in a span once per span (a
    day's "next period" is the next day's period), the interaction streams' tail once; the rest
    is the sources' own."""

    def __init__(self, sources) -> None:
        self._sources = sources
        self._care: tuple[float, float, list] | None = None
        self._active: dict[tuple[float, float], set[str]] = {}
        self._merges: dict[str, str] | None = None
        self._tail: tuple[float, list] | None = None

    def __getattr__(self, name):
        return getattr(self._sources, name)

    def logged_care_events(self, lo: float, hi: float) -> list:
        if self._care is None or lo < self._care[0] or hi > self._care[1]:
            # read a month ahead at once: the next days ask for spans inside it
            lo_all, hi_all = lo, hi + 31 * DAY_S
            self._care = (lo_all, hi_all, self._sources.logged_care_events(lo_all, hi_all))
        return [e for e in self._care[2] if lo <= e.ts < hi]

    def logged_active_customers(self, lo: float, hi: float) -> set[str]:
        key = (lo, hi)
        if key not in self._active:
            self._active[key] = self._sources.logged_active_customers(lo, hi)
        return set(self._active[key])

    def logged_merges(self) -> dict[str, str]:
        if self._merges is None:
            self._merges = self._sources.logged_merges()
        return dict(self._merges)

    async def unexported(self, lo: float) -> list:
        if self._tail is None or lo < self._tail[0]:
            self._tail = (lo, await self._sources.unexported(lo))
        return [e for e in self._tail[1] if e.ts >= lo]


def _canonical(survivors: dict[str, str], log_merges: dict[str, str]):
    """customer -> the customer they are now: the decided customers' survivors (Redis), else the
    log's merge chain (a customer never decided on, merged since an interaction)."""
    def canonical(customer: str) -> str:
        if customer in survivors:
            return survivors[customer]
        c = customer
        for _ in range(MAX_MERGE_HOPS):
            nxt = log_merges.get(c)
            if nxt is None or nxt == c:
                break
            c = nxt
        return survivors.get(c, c)
    return canonical
