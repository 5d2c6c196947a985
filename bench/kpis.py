"""Benchmark of the KPIs: `python -m bench.kpis`.

A week of decisions and delivery receipts in a real Redis (16 customer shards), the real UCI
Online Retail purchases (Chen 2015, CC BY 4.0, doi 10.24432/C5BW33) moved onto the weeks
around it as the customers' history in the Parquet log, and 300 offers on the most bought
items. Timed, interleaved round by round so that a noisy neighbour slows all of them alike:

1. floor_read   the I/O the report cannot avoid: XRANGE of every decisions and receipts stream
                (raw entries, nothing parsed) and `read_interactions` of the log over the same
                span (period plus two attribution windows)
2. compute      `compute_kpis` alone, on what the report read (pure Python)
3. report       `Kpis.report`, what GET /v1/kpis runs: read, parse, resolve merges, compute
4. rollup       the `kpi_rollup` job from scratch: every day within the retention whose window
                has closed (35 days, the week's seven with data), each read and computed

Tables go to stdout, the raw numbers to bench/results/kpis.json. `--quick` runs one round
with fewer decisions.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
import redis.asyncio as aioredis

from bench.geo import machine_info, table
from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.decisions import DecisionV1, decisions_stream_key
from vicino.services.kernel.contracts.deliveries import DeliveryReceiptV1, receipts_stream_key
from vicino.services.kernel.contracts.history_file import read_history
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from vicino.services.recommender.adapters.catalog_repository import CatalogRepository
from vicino.services.recommender.adapters.parquet_log import ParquetLog
from vicino.services.recommender.domain.kpis import ConversionEvent, compute_kpis
from vicino.services.recommender.domain.offers import Offer
from vicino.services.recommender.settings import RecommenderSettings
from vicino.services.recommender.use_cases.kpis import KpiQuery
from vicino.services.recommender.wiring import build_kpis

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/datasets/online-retail/online_retail.csv.gz")
RESULTS = ROOT / "bench" / "results" / "kpis.json"
DAY = 86_400.0
SHARDS = 16
WINDOW_S = 72 * 3600.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def build_world(redis_url: str, root: str, data: Path, n_decisions: int, seed: int = 7) -> dict:
    """Writes the world; returns the period and its sizes."""
    rng = random.Random(seed)
    table_, _ = read_history(data, received_at=time.time())
    purchases = table_.filter(pc.equal(table_["type"], "purchase"))
    # the data's last day becomes the day before yesterday: the week before it is the period
    ts = pc.cast(purchases["ts"], pa.int64()).to_numpy() / 1e6
    now = time.time()
    shift = (now - 2 * DAY) - ts.max()
    shifted = pa.array(((ts + shift) * 1e6).astype(np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    purchases = purchases.set_column(purchases.schema.get_field_index("ts"), "ts", shifted)
    purchases = purchases.set_column(purchases.schema.get_field_index("received_at"), "received_at", shifted)
    ParquetLog(root).write_partitioned(INTERACTIONS, purchases, "bench-uci")
    end = now - 2 * DAY
    start = end - 7 * DAY
    in_period = purchases.filter(pc.greater_equal(pc.cast(purchases["ts"], pa.int64()), int(start * 1e6)))
    customers = sorted(set(in_period["customer_id"].to_pylist()))
    counts = in_period.group_by("item_id").aggregate([([], "count_all")]).sort_by([("count_all", "descending")])
    items = counts["item_id"].to_pylist()[:300]

    r = redis.Redis.from_url(redis_url)
    catalog_offers = [Offer(offer_id=f"o{i}", title=f"offer on {item}", item_ids=[item], category="BENCH", price=5.0,
                            currency="GBP", valid_from=start - 30 * DAY, valid_to=end + 30 * DAY)
                      for i, item in enumerate(items)]

    async def offers():
        a = aioredis.Redis.from_url(redis_url)
        try:
            await CatalogRepository(a).upsert_offers([(o.offer_id, o.model_dump_json().encode())
                                                      for o in catalog_offers])
        finally:
            await a.aclose()

    asyncio.run(offers())
    stores = [f"store-{i:03d}" for i in range(200)]
    rows = []
    for n in range(n_decisions):
        customer = rng.choice(customers)
        at = start + rng.random() * (end - start)
        holdout = (hash(customer) % 10) == 0
        roll = rng.random()
        offer = f"o{rng.randrange(len(items))}"
        if holdout:
            d = dict(outcome="suppress", reason="holdout", offer_id=offer, holdout=True)
        elif roll < 0.15:
            d = dict(outcome="suppress", reason=rng.choice(["quiet_hours", "daily_cap", "store_cooldown"]),
                     holdout=False)
        else:
            d = dict(outcome="send", offer_id=offer, job_id=f"j{n}", holdout=False)
        rows.append(DecisionV1(decision_id=f"d{n}", customer_id=customer, device_id=f"{customer}-phone",
                               store_id=rng.choice(stores), visit_id=f"v{n}", event_id=f"e{n}", event_type="dwell",
                               ts=at, decided_at=at, price=5.0 if d.get("offer_id") else None, **d))
    rows.sort(key=lambda d: d.decided_at)
    pipe = r.pipeline(transaction=False)
    receipts = 0
    for n, d in enumerate(rows):
        shard = customer_shard(d.customer_id, SHARDS)
        pipe.xadd(decisions_stream_key(shard), d.to_stream_fields(), id=f"{int(d.decided_at * 1000)}-{n}")
        if d.outcome == "send":
            statuses = ["queued", "sent"] + (["opened"] if rng.random() < 0.2 else [])
            for k, status in enumerate(statuses):
                rc = DeliveryReceiptV1(delivery_id=f"dl{n}", customer_id=d.customer_id, device_id=d.device_id,
                                       store_id=d.store_id, offer_id=d.offer_id, visit_id=d.visit_id,
                                       decision_id=d.decision_id, status=status, ts=d.decided_at + k)
                pipe.xadd(receipts_stream_key(shard), rc.to_stream_fields(), id=f"{int(d.decided_at * 1000)}-{3 * n + k}")
                receipts += 1
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r.close()
    return {"start": start, "end": end, "now": now, "decisions": n_decisions, "receipts": receipts,
            "log_rows": purchases.num_rows, "customers": len(customers), "offers": len(items)}


async def floor_read(redis_url: str, root: str, lo: float, hi: float) -> float:
    r = aioredis.Redis.from_url(redis_url)
    t = time.perf_counter()
    try:
        for key in (decisions_stream_key, receipts_stream_key):
            for shard in range(SHARDS):
                cursor = f"{int(lo * 1000)}-0"
                while True:
                    page = await r.xrange(key(shard), min=cursor, max="+", count=10_000)
                    if len(page) < 10_000:
                        break
                    ms, seq = page[-1][0].decode().split("-")
                    cursor = f"{ms}-{int(seq) + 1}"
        await asyncio.to_thread(ParquetLog(root).read_interactions, lo, hi)
        return time.perf_counter() - t
    finally:
        await r.aclose()


async def one_round(settings: RecommenderSettings, world: dict) -> dict:
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        kpis = build_kpis(settings, r, FixedClock(world["now"]))
        q = KpiQuery(world["start"], world["end"], WINDOW_S)
        res = {"floor_read": await floor_read(settings.redis_url, settings.history_dir, q.start,
                                              q.end + 2 * WINDOW_S)}
        t = time.perf_counter()
        report = await kpis.report(q)
        res["report"] = time.perf_counter() - t
        # compute alone, on the same inputs (read again, untimed)
        decisions = await kpis.sources.decisions(q.start, q.end)
        receipts = await kpis.sources.receipts(q.start, q.end + settings.push_ttl_s)
        customers = {d.customer_id for d in decisions}
        events = kpis.sources.logged_events(q.start, q.end + 2 * WINDOW_S, customers)
        offer_items = await kpis._offer_items()
        t = time.perf_counter()
        compute_kpis(decisions, receipts, events, offer_items=offer_items, period=(q.start, q.end), window_s=WINDOW_S)
        res["compute"] = time.perf_counter() - t
        res["_events"] = len(events)
        await r.delete("vicino:{kpis}:daily")
        t = time.perf_counter()
        rolled = await kpis.roll_up()
        res["rollup"] = time.perf_counter() - t
        res["_rolled_days"] = len(rolled["rolled_up"])
        res["_report"] = {k: report[k] for k in ("decisions", "deliveries", "conversions", "uplift")}
        return res
    finally:
        await r.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kpis", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, 20,000 decisions")
    ap.add_argument("--data", type=Path, default=DATA, help="the Online Retail CSV (.gz)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rounds, n_decisions = (1, 20_000) if args.quick else (3, 100_000)
    info = machine_info()
    print(f"Vicino KPI benchmark: {info['cpu_count']} CPUs, Python {info['python']}, {info['date']}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vicino-bench-kpis-") as tmp, \
            EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        settings = RecommenderSettings(redis_url=server.url, admin_token="bench-admin-token-0123456789",
                                       token_secret="bench-token-secret-0123456789abcdef",
                                       history_dir=str(Path(tmp) / "history"), customer_shards=SHARDS,
                                       attribution_window_h=WINDOW_S / 3600)
        log(f"building the world: {n_decisions:,} decisions")
        world = build_world(server.url, settings.history_dir, args.data, n_decisions)
        runs = []
        for i in range(rounds):
            log(f"round {i + 1}/{rounds}")
            runs.append(asyncio.run(one_round(settings, world)))
    names = ["floor_read", "compute", "report", "rollup"]
    median = {n: statistics.median(r[n] for r in runs) for n in names}
    last = runs[-1]
    results = {
        "machine": info, "profile": "quick" if args.quick else "full", "rounds": rounds,
        "world": {k: v for k, v in world.items() if k not in ("start", "end", "now")},
        "events_read": last["_events"], "rolled_days": last["_rolled_days"],
        "seconds": {n: [round(r[n], 3) for r in runs] for n in names},
        "median_s": {n: round(v, 3) for n, v in median.items()},
        "report_vs_floor_read": round(median["report"] / median["floor_read"], 2),
        "compute_share_of_report": round(median["compute"] / median["report"], 2),
        "decisions_per_s": round(world["decisions"] / median["report"]),
        "report_excerpt": last["_report"],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    what = {"floor_read": "raw reads: streams + Parquet (floor)", "compute": "compute_kpis alone",
            "report": "GET /v1/kpis (Kpis.report)", "rollup": f"kpi_rollup, {last['_rolled_days']} days"}
    lines = [[what[n], f"{median[n]:.2f}", f"{median[n] / median['floor_read']:.1f}x",
              " ".join(f"{r[n]:.2f}" for r in runs)] for n in names]
    print()
    print(table(f"A week: {world['decisions']:,} decisions, {world['receipts']:,} receipts, "
                f"{last['_events']:,} purchases of {world['customers']:,} customers (median of {rounds})",
                ["step", "seconds", "vs read floor", "rounds"], lines))
    print()
    print(f"report: {results['decisions_per_s']:,} decisions/s; {results['report_vs_floor_read']}x the raw reads; "
          f"compute is {100 * results['compute_share_of_report']:.0f}% of it")
    u = last["_report"]["uplift"]
    print(f"uplift on the bench world (random offers, so about zero): {u['difference']}, CI {u['ci95']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
