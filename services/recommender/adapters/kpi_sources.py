"""What the KPIs read: the decisions streams (this service's), the push gateway's receipt
streams (its published contract; the receipts of campaigns' test sends are left out here), the
customers' interactions (the Parquet log and what the interaction streams hold that is not
exported yet: purchases and redemptions, surveys, support contacts and replies, and who was
active at all), merges, and the daily roll-ups.

Stream entry ids are the server time of the append, so a period is read by id range with a
margin, and the domain keeps exactly what belongs to it. Customers merged since a decision are
followed to the survivor: a purchase made after the merge names the survivor.
"""
from __future__ import annotations

from typing import Iterable

import orjson
import pyarrow.compute as pc

from vicino.services.kernel.contracts.decisions import DecisionV1, decisions_stream_key
from vicino.services.kernel.contracts.deliveries import DeliveryReceiptV1, receipts_stream_key
from vicino.services.kernel.contracts.interactions import interactions_stream_key, merged_into_key

from ..domain.kpis import CARE_TYPES, CONVERSION_TYPES, ConversionEvent
from .parquet_log import ParquetLog
from .redis_keys import KPI_DAILY, CustomerKeys

PAGE = 10_000
CLOCK_MARGIN_S = 60.0  # stream ids (Redis time) against the decided_at of the writer's clock
MAX_MERGE_HOPS = 16


def _ms(t: float) -> int:
    return max(0, int(t * 1000))


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


class KpiSources:
    def __init__(self, redis, customer_shards: int, history_dir: str, max_future_s: float) -> None:
        self._r = redis
        self.shards = customer_shards
        self.history_dir = history_dir
        self.max_future_s = max_future_s

    async def _range(self, stream: str, lo: float, hi: float):
        start = f"{_ms(lo)}-0"
        end = f"{_ms(hi)}-18446744073709551615" if hi != float("inf") else "+"
        while True:
            page = await self._r.xrange(stream, min=start, max=end, count=PAGE)
            for entry_id, fields in page:
                if fields:
                    yield fields
            if len(page) < PAGE:
                return
            ms, seq = _s(page[-1][0]).split("-")
            start = f"{ms}-{int(seq) + 1}"

    async def _records(self, stream_key, parse, lo: float, hi: float) -> list:
        out = []
        for shard in range(self.shards):
            async for fields in self._range(stream_key(shard), lo - CLOCK_MARGIN_S, hi + CLOCK_MARGIN_S):
                try:
                    out.append(parse(fields))
                except ValueError:  # a newer or broken entry is not this version's to count
                    continue
        return out

    async def decisions(self, lo: float, hi: float) -> list[DecisionV1]:
        return await self._records(decisions_stream_key, DecisionV1.from_stream_fields, lo, hi)

    async def receipts(self, lo: float, hi: float) -> list[DeliveryReceiptV1]:
        """The receipts of the period, without those of campaigns' test sends: a marketer's test
        on their own phone is no customer's push, and must move no figure."""
        return [r for r in await self._records(receipts_stream_key, DeliveryReceiptV1.from_stream_fields, lo, hi)
                if not r.test]

    async def survivors(self, customer_ids: Iterable[str]) -> dict[str, str]:
        """customer -> the customer it is now (itself unless merged since), and every customer
        merged into one of those -> that one (their older interactions name them)."""
        out = {cid: cid for cid in set(customer_ids)}
        pending = list(out)
        for _ in range(MAX_MERGE_HOPS):  # one pipelined round per hop of the merge chains
            if not pending:
                break
            pipe = self._r.pipeline(transaction=False)
            for cid in pending:
                pipe.get(merged_into_key(out[cid], self.shards))
            moved = []
            for cid, nxt in zip(pending, await pipe.execute()):
                if nxt:
                    out[cid] = _s(nxt)
                    moved.append(cid)
            pending = moved
        finals = sorted(set(out.values()))
        for final in finals:
            out.setdefault(final, final)  # the survivor's own interactions count too
        pipe = self._r.pipeline(transaction=False)
        for final in finals:
            pipe.smembers(CustomerKeys(final, self.shards).aliases)
        for final, aliases in zip(finals, await pipe.execute()):
            for alias in aliases:
                out.setdefault(_s(alias), final)
        return out

    async def unexported(self, lo: float) -> list[ConversionEvent]:
        """Every interaction with ts >= lo still in the interaction streams (not yet in the log:
        a short tail, as the exporter flushes)."""
        out = []
        for shard in range(self.shards):
            # an interaction is appended when accepted, at most max_future_s before it happens
            async for fields in self._range(interactions_stream_key(shard), lo - self.max_future_s, float("inf")):
                if _s(fields.get(b"kind") or fields.get("kind") or "") != "interaction":
                    continue
                d = orjson.loads(fields.get(b"data") or fields.get("data"))
                if d["ts"] >= lo:
                    out.append(ConversionEvent(d["event_id"], d["customer_id"], d["type"], d["channel"], d["ts"],
                                               d.get("item_id"), d.get("offer_id"), d.get("store_id"), d.get("value"),
                                               d.get("quantity"), d.get("score"), d.get("reply_to")))
        return out

    async def unexported_events(self, lo: float, hi: float, customers: set[str]) -> list[ConversionEvent]:
        """Purchases and redemptions of `customers` still in the interaction streams."""
        return [e for e in await self.unexported(lo)
                if e.type in CONVERSION_TYPES and e.customer_id in customers and e.ts < hi]

    def logged_events(self, lo: float, hi: float, customers: set[str]) -> list[ConversionEvent]:
        """Purchases and redemptions of `customers` in the Parquet log (blocking: call it in a thread)."""
        if not customers:
            return []
        return self._logged(lo, hi, CONVERSION_TYPES, customers)

    def logged_care_events(self, lo: float, hi: float) -> list[ConversionEvent]:
        """Everyone's surveys, support contacts and replies in the Parquet log (blocking)."""
        return self._logged(lo, hi, CARE_TYPES, None)

    def _logged(self, lo: float, hi: float, types: frozenset, customers: set[str] | None) -> list[ConversionEvent]:
        table = ParquetLog(self.history_dir).read_interactions(lo, hi, types=types)
        if table.num_rows == 0:
            return []
        if customers is not None:
            table = table.filter(pc.is_in(table["customer_id"], value_set=_array(sorted(customers))))
        cols = table.select(["event_id", "customer_id", "type", "channel", "ts", "item_id", "offer_id", "store_id",
                             "value", "quantity", "score", "reply_to"]).to_pydict()
        return [ConversionEvent(e, c, t, ch, ts.timestamp(), i, o, s, v, q, sc, rt)
                for e, c, t, ch, ts, i, o, s, v, q, sc, rt in zip(*cols.values())]

    def logged_active_customers(self, lo: float, hi: float) -> set[str]:
        """The customers with any interaction in [lo, hi) in the Parquet log (blocking)."""
        return ParquetLog(self.history_dir).read_customer_ids(lo, hi)

    def logged_merges(self) -> dict[str, str]:
        """merged -> into, as the log records them (older rows name the merged ids)."""
        table = ParquetLog(self.history_dir).read_merges()
        return dict(zip(table["merged"].to_pylist(), table["into"].to_pylist())) if table.num_rows else {}

    # daily roll-ups ---------------------------------------------------------------------------

    async def rolled_days(self) -> set[str]:
        return {_s(k) for k in await self._r.hkeys(KPI_DAILY)}

    async def save_day(self, day: str, record: dict) -> None:
        await self._r.hset(KPI_DAILY, day, orjson.dumps(record))

    async def days(self, first: str, last: str) -> list[dict]:
        out = []
        for day in sorted(d for d in await self.rolled_days() if first <= d <= last):
            raw = await self._r.hget(KPI_DAILY, day)
            if raw:
                out.append(orjson.loads(raw))
        return out


def _array(values: list[str]):
    import pyarrow as pa

    return pa.array(values, pa.string())
