"""Benchmark of a visit decision with campaigns: `python -m bench.campaigns`.

The decision use case (`VisitDecisions.on_event`, what the recommender-worker runs per geofence
event) against a real Redis, with the published state geo would have written (devices with
time zone and locale, consent, stores with names and brands), 300 offers in the catalogue and
the real ranking (no model: the catalogue's order). CPU seconds of this process per decided
event, two setups interleaved round by round so that a noisy neighbour slows both alike:

1. default     no campaign stored: the default campaign built from the settings decides, as the
               stack did before campaigns (the peer)
2. campaigns   50 active campaigns: store scopes, brands, audiences (countries, purchase bands,
               bought items), offer pools, discover mode, caps, budgets, quiet hours, holdouts,
               messages in Italian and English rendered with Babel; each event is tried against
               every campaign whose trigger matches

Target (issue 17): ≤ 2 ms of CPU per decision with 50 active campaigns. Each event is a new
visit of a new customer (a distinct hash slot, no cache shared between events but the campaign
snapshot and the catalogue, as in the worker). `--quick`: one round, fewer events.
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

import orjson

from bench.geo import machine_info, table
from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.customer_state import consent_key, device_registration_key
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1
from vicino.services.kernel.contracts.stores import STORES_FEATURES
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from vicino.services.recommender.adapters.campaign_repository import CampaignRepository
from vicino.services.recommender.adapters.catalog_repository import CatalogRepository
from vicino.services.recommender.domain.campaigns import CampaignIn
from vicino.services.recommender.domain.offers import Offer
from vicino.services.recommender.settings import RecommenderSettings
from vicino.services.recommender.wiring import build_ranker, build_visit_decisions
from vicino.services.runtime.redis_client import open_async

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "campaigns.json"
DAY = 86_400.0
STORES = 200
VISITED = 40  # the stores the measured visits are at (each seen before the measurement, as in a worker)
OFFERS = 300
CAMPAIGNS = 50
NOON = 1_780_480_800.0  # Wednesday 3 June 2026 12:00 Rome: no quiet hours
TARGET_MS = 2.0


class Now(Clock):
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def campaigns(rnd: random.Random) -> list[tuple[str, dict]]:
    brands = ["Coop", "Esselunga", "Conad", "Carrefour"]
    out = []
    for n in range(CAMPAIGNS):
        spec: dict = {"name": f"campaign {n}", "status": "active", "priority": rnd.randint(0, 100),
                      "trigger": {"on": ["dwell"]}, "limits": {"holdout_percent": 10, "per_customer_per_day": 2,
                                                               "per_customer_per_week": 5}}
        kind = n % 10
        if kind == 0:
            spec["trigger"]["store_ids"] = [f"st-{i}" for i in rnd.sample(range(STORES), 40)]
        elif kind == 1:
            spec["trigger"]["brands"] = [rnd.choice(brands)]
        elif kind == 2:
            spec["audience"] = {"countries": ["IT"], "min_purchases": 1}
        elif kind == 3:
            spec["audience"] = {"bought_items": [f"item-{i}" for i in range(0, 30)]}
        elif kind == 4:
            spec["offers"] = {"offer_ids": [f"of-{i}" for i in rnd.sample(range(OFFERS), 20)]}
        elif kind == 5:
            spec["offers"] = {"mode": "discover", "discover_days": 60}
        elif kind == 6:
            spec["limits"].update(sends_per_day=1_000_000, sends_total=10_000_000)
        elif kind == 7:
            spec["limits"]["quiet_hours"] = "22:00-08:00"
            spec["hours"] = "Mo-Sa 08:00-20:00"
        elif kind == 8:
            spec["audience"] = {"channels": ["web", "app"], "not_purchased_within_days": 365}
        if n % 2 == 0:
            spec["message"] = {"templates": {
                "it": {"title": "{offer_title} da {store_name}",
                       "body": "Solo {price} invece di {regular_price} (-{discount_percent}), fino al {valid_to}"},
                "en": {"title": "{offer_title} at {store_name}", "body": "Only {price}, until {valid_to}"}},
                "default_locale": "it"}
        out.append((f"cmp-{n:02d}", spec))
    return out


async def seed(redis, settings: RecommenderSettings, customers: int, rnd: random.Random) -> None:
    brands = ["Coop", "Esselunga", "Conad", "Carrefour"]
    pipe = redis.pipeline(transaction=False)
    for i in range(STORES):
        pipe.hset(STORES_FEATURES, f"st-{i}", orjson.dumps({
            "type": "Feature", "id": f"st-{i}", "geometry": {"type": "Point", "coordinates": [9.19, 45.46]},
            "properties": {"name": f"{brands[i % 4]} {i}", "brand": brands[i % 4], "radius_m": 60,
                           "timezone": "Europe/Rome"}}))
    await pipe.execute()
    offers = [Offer.model_validate({
        "offer_id": f"of-{i}", "title": f"Offerta {i}", "item_ids": [f"item-{i}"], "category": f"CAT{i % 12}",
        "price": 2.0 + i % 17, "promo_price": 1.5 + i % 17, "currency": "EUR", "valid_from": NOON - 30 * DAY,
        "valid_to": NOON + 30 * DAY, "updated_at": NOON}) for i in range(OFFERS)]
    await CatalogRepository(redis).upsert_offers([(o.offer_id, o.model_dump_json().encode()) for o in offers])
    for c in range(customers):
        cid, dev = f"cu-{c}", f"ph-{c}"
        pipe = redis.pipeline(transaction=False)
        pipe.hset(device_registration_key(dev, settings.event_shards), mapping={
            "customer_id": cid, "platform": "android", "push_token": f"tok-{c}", "timezone": "Europe/Rome",
            "locale": rnd.choice(["it-IT", "en-GB", ""]), "registered_at": NOON - DAY})
        pipe.hset(consent_key(cid), mapping={"location": "1", "marketing": "1", "personalisation": "1",
                                             "updated_at": NOON - DAY})
        await pipe.execute()


async def history(redis, settings: RecommenderSettings, customers: range, rnd: random.Random) -> None:
    """A few purchases each in the hot history (what the audiences read), as an import writes it."""
    from vicino.services.kernel.contracts.interactions import InteractionV1
    from vicino.services.recommender.adapters.customer_repository import CustomerRepository

    repo = CustomerRepository(redis, settings)
    batch: list[InteractionV1] = []
    for c in customers:
        for k in range(rnd.randint(0, 6)):
            batch.append(InteractionV1(event_id=f"h-{c}-{k}", customer_id=f"cu-{c}",
                                       channel=rnd.choice(["store", "web"]), type="purchase",
                                       item_id=f"item-{rnd.randrange(OFFERS)}", value=3.0, country="IT",
                                       ts=NOON - rnd.uniform(1, 90) * DAY, received_at=NOON - DAY))
        if len(batch) >= 500:
            await repo.append(batch, log=False, now=NOON)
            batch = []
    if batch:
        await repo.append(batch, log=False, now=NOON)


async def run(server_url: str, tmp: Path, quick: bool) -> dict:
    rounds, per_round = (1, 400) if quick else (5, 600)
    customers = 2 * rounds * per_round
    settings = RecommenderSettings(redis_url=server_url, admin_token="bench-admin-token-0123456789",
                                   token_secret="bench-token-secret-0123456789abcdef",
                                   history_dir=str(tmp / "history"), model_dir=str(tmp / "models"),
                                   quiet_hours="", cap_per_day=100, store_cooldown_s=0)
    rnd = random.Random(17)
    redis = open_async(server_url)
    try:
        await seed(redis, settings, customers, rnd)
        await history(redis, settings, range(customers), rnd)
        clock = Now(NOON)
        ranker = build_ranker(settings, redis, clock)
        decisions = build_visit_decisions(settings, redis, ranker, clock)
        book = CampaignRepository(redis)
        specs = campaigns(rnd)
        out: dict = {"default": [], "campaigns": [], "outcomes": {"default": {}, "campaigns": {}}}
        seq = iter(range(customers))
        for r in range(rounds):
            for setup in (("default", "campaigns") if r % 2 == 0 else ("campaigns", "default")):
                # the campaign book: empty (the default campaign decides) or the 50
                _, stored = await book.all()
                for c in stored:
                    await book.write(c.campaign_id, c.revision, None, 0.0, NOON)
                if setup == "campaigns":
                    for cid, spec in specs:
                        await book.write(cid, 0, CampaignIn.model_validate(spec), NOON, NOON)
                events = []
                for _ in range(per_round):
                    c = next(seq)
                    events.append(GeofenceEventV1(
                        event_id=f"ev-{c}", type="dwell", device_id=f"ph-{c}", customer_id=f"cu-{c}",
                        store_id=f"st-{c % VISITED}", visit_id=f"v-{c}", ts=NOON - 1, emitted_at=NOON - 0.5,
                        dwell_s=300.0))
                if r == 0:  # the campaigns, the catalogue and each store's verdicts: loaded once, as in a worker
                    for e in events[:VISITED]:
                        await decisions.on_event(e)
                    events = events[VISITED:]
                else:
                    await decisions.on_event(events[0])
                counts: dict = out["outcomes"][setup]
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for e in events[1:]:
                    o = await decisions.on_event(e)
                    key = o.kind if o.decision is None else (o.decision.reason or "send")
                    counts[key] = counts.get(key, 0) + 1
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                out[setup].append({"cpu_ms": 1000 * cpu / (len(events) - 1), "wall_ms": 1000 * wall / (len(events) - 1)})
        return out
    finally:
        await redis.aclose()


def campaign_logic_ms(specs: list[tuple[str, dict]], n: int) -> float:
    """CPU of what campaigns add, alone: for one visit, the triggered campaigns, each one's checks,
    the first ranked offer each may use (300 ranked offers), its holdout, and the message
    rendered in the chosen locale. Pure code, no Redis."""
    from vicino.services.recommender.domain import messages
    from vicino.services.recommender.domain.campaigns import (Campaign, CampaignCounters, VisitContext,
                                                              campaign_holdout, facts_from_history, offer_allowed,
                                                              precheck, triggered)

    book = [Campaign(cid, 1, CampaignIn.model_validate(spec), NOON, NOON) for cid, spec in specs]
    history = [{"type": "purchase", "channel": "store", "item_id": f"item-{i}", "ts": NOON - i * DAY, "country": "IT"}
               for i in range(5)]
    ranked = [(f"of-{i}", (f"item-{i}",)) for i in range(OFFERS)]
    cpu0 = time.process_time()
    for k in range(n):
        ctx = VisitContext("dwell", f"st-{k % VISITED}", ["Coop", "Esselunga", "Conad", "Carrefour"][k % 4],
                           "Europe/Rome", "Europe/Rome", NOON)
        facts = facts_from_history(f"cu-{k}", history, {}, {})
        sent = None
        for c in triggered(book, ctx):
            if sent is not None or precheck(c, ctx, facts, CampaignCounters()) is not None:
                continue
            best = next((o for o in ranked if offer_allowed(c.spec.offers, o[0], o[1], facts, NOON)), None)
            if best is not None and not campaign_holdout(f"cu-{k}", c):
                sent = (c, best)
        if sent is not None and sent[0].spec.message is not None:
            m = sent[0].spec.message
            locale = messages.pick_locale(m.templates.keys(), ["en-GB"], m.default_locale)
            values = messages.MessageValues(store_name="Coop 1", offer_title="Offerta", price=3.4, regular_price=4.0,
                                            currency="EUR", valid_to=NOON + DAY * (k % 30))
            messages.render(m.templates[locale].title, locale, values)
            messages.render(m.templates[locale].body, locale, values)
    return 1000 * (time.process_time() - cpu0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.campaigns", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"Vicino campaigns benchmark: {info['cpu_count']} CPUs, Python {info['python']}, {info['date']}")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        raw = asyncio.run(run(server.url, Path(tmp), args.quick))
    med = {k: {f: statistics.median(x[f] for x in raw[k]) for f in ("cpu_ms", "wall_ms")}
           for k in ("default", "campaigns")}
    logic_ms = campaign_logic_ms(campaigns(random.Random(17)), 300 if args.quick else 2000)
    ratio = med["campaigns"]["cpu_ms"] / med["default"]["cpu_ms"]
    ok = med["campaigns"]["cpu_ms"] <= TARGET_MS
    rows = [["default campaign (the peer: before campaigns)", f"{med['default']['cpu_ms']:.3f}",
             f"{med['default']['wall_ms']:.3f}", "1.00x", "-"],
            [f"{CAMPAIGNS} active campaigns", f"{med['campaigns']['cpu_ms']:.3f}", f"{med['campaigns']['wall_ms']:.3f}",
             f"{ratio:.2f}x", f"<= {TARGET_MS} ms CPU: {'PASS' if ok else 'FAIL'}"],
            [f"the {CAMPAIGNS} campaigns' own logic, alone (pure)", f"{logic_ms:.3f}", "-",
             f"{logic_ms / med['default']['cpu_ms']:.2f}x", "-"]]
    print(table(f"CPU per visit decision, {OFFERS} offers, {STORES} stores (median of {len(raw['default'])} rounds)",
                ["setup", "CPU ms", "wall ms", "vs default", "target"], rows))
    print("outcomes:", json.dumps(raw["outcomes"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "profile": "quick" if args.quick else "full",
                                    "offers": OFFERS, "stores": STORES, "campaigns": CAMPAIGNS, "median": med,
                                    "ratio_cpu": ratio, "campaign_logic_ms": logic_ms, "target_ms": TARGET_MS,
                                    "pass": ok, "rounds": raw},
                                   indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
