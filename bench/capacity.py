"""Capacity figures: `python -m bench.capacity`.

Redis memory per store, per active device and per stream entry, and the geo replica's own memory
per store (its in-memory H3 index), measured on the real services:

1. stores    the demo stores (MIMIT fuel stations of Milano and Roma and the Milano NIL polygons:
             real data, see services/launcher/demo_data/ATTRIBUTION.md) upserted through a
             `vicino serve geo` process: Redis `used_memory` and the process's RSS, before and after
2. devices   N devices registered (each its own customer), consent given, one fix inside a store
             (an open visit and its enter event): Redis `used_memory` per device, and `MEMORY
             USAGE` of each key kind
3. entries   bytes per entry of the decision, receipt and push-job streams (realistic entries)
4. history   a customer's hot history in Redis at 20, 50, 100 and 200 interactions
             (`VICINO_HISTORY_HOT_PER_CUSTOMER`; the dedup window included)

The floor beside each figure is the raw JSON of what is stored (a record's payload), so the
ratio says what Redis's structures cost on top. Tables to stdout, numbers to
bench/results/capacity.json; the README turns them into sizes for 1M and 10M devices.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import redis

from bench.geo import machine_info, table
from vicino.services.kernel.contracts.customer_state import (consent_key, consent_log_key, customer_devices_key,
                                                      device_registration_key)
from vicino.services.kernel.contracts.decisions import DecisionV1
from vicino.services.kernel.contracts.deliveries import DeliveryReceiptV1
from vicino.services.kernel.contracts.geofence_events import device_shard, events_stream_key, shard_tag
from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1
from vicino.services.launcher.demo import demo_files
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from testbed.processes import served_service
from vicino.services.launcher.store_files import read_features

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "capacity.json"
ADMIN = "bench-admin-token-0123456789"
SECRET = "bench-token-secret-0123456789abcdef"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def used(r) -> int:
    return int(r.info("memory")["used_memory"])


def geo_pid(url: str) -> psutil.Process:
    port = int(url.rsplit(":", 1)[1])
    for c in psutil.net_connections("tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return psutil.Process(c.pid)
    raise RuntimeError("geo process not found")


def section_stores(r, url: str) -> dict:
    features = []
    for path in demo_files():
        features += read_features(path, default_radius_m=80)
    proc = geo_pid(url)
    before_redis, before_rss = used(r), proc.memory_info().rss
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120) as c:
        for i in range(0, len(features), 1000):
            c.post("/v1/stores", json={"type": "FeatureCollection", "features": features[i:i + 1000]}).raise_for_status()
        time.sleep(2.0)  # the replica's index follows the change log
    raw = sum(len(json.dumps(f, separators=(",", ":"))) for f in features)
    n = len(features)
    return {"stores": n, "redis_bytes_per_store": round((used(r) - before_redis) / n),
            "geo_rss_bytes_per_store": round((proc.memory_info().rss - before_rss) / n),
            "geojson_bytes_per_store": round(raw / n)}


def section_devices(r, url: str, n: int) -> dict:
    store = {"type": "Feature", "id": "cap-store", "properties": {"radius_m": 80},
             "geometry": {"type": "Point", "coordinates": [9.19, 45.4642]}}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        c.put("/v1/stores/cap-store", json=store).raise_for_status()
        time.sleep(1.0)
        before = used(r)
        for i in range(n):
            reg = c.post("/v1/devices", json={"device_id": f"cap-phone-{i}", "customer_id": f"cap-cust-{i}",
                                              "platform": "android", "push_token": f"fcm-token-{i:06d}" * 8,
                                              "timezone": "Europe/Rome"})
            reg.raise_for_status()
            c.put(f"/v1/customers/cap-cust-{i}/consent",
                  json={"location": True, "marketing": True, "personalisation": True}).raise_for_status()
            token = reg.json()["token"]
            c.post("/v1/locations", headers={"Authorization": f"Bearer {token}"}, json={
                "device_id": f"cap-phone-{i}", "fixes": [{"lat": 45.4642, "lon": 9.19, "accuracy_m": 10,
                                                          "ts": time.time()}]}).raise_for_status()
        total = used(r) - before
    kinds = {"registration": 0, "visit_state": 0, "consent": 0, "consent_log": 0, "customer_devices": 0}
    for i in range(n):
        d, cust = f"cap-phone-{i}", f"cap-cust-{i}"
        tag = shard_tag(device_shard(d, 16))
        for kind, key in (("registration", device_registration_key(d, 16)),
                          ("visit_state", f"vicino:{tag}:device:{d}:visits"), ("consent", consent_key(cust)),
                          ("consent_log", consent_log_key(cust)), ("customer_devices", customer_devices_key(cust))):
            kinds[kind] += r.memory_usage(key, samples=0) or 0
    events = sum(r.memory_usage(events_stream_key(s), samples=0) or 0 for s in range(16))
    return {"devices": n, "redis_bytes_per_device": round(total / n),
            "by_key": {k: round(v / n) for k, v in kinds.items()}, "event_stream_bytes_per_device": round(events / n)}


def section_entries(r, n: int) -> dict:
    now = time.time()
    samples = {
        "decision": lambda i: DecisionV1(decision_id=f"dec_{i:026d}", customer_id=f"customer-{i}", device_id=f"phone-{i}",
                                         store_id="mimit-12345", visit_id=f"vis_{i:026d}", event_id=f"evt_{i:026d}",
                                         event_type="dwell", outcome="send", offer_id="uci-85123A", score=1.2345,
                                         price=2.29, currency="GBP", rank_reason="model",
                                         model_version="20261126T170059Z-1fb802", holdout=False, job_id=f"job_{i:026d}",
                                         ts=now, decided_at=now).to_stream_fields(),
        "receipt": lambda i: DeliveryReceiptV1(delivery_id=f"dlv005{i:024x}", customer_id=f"customer-{i}",
                                               device_id=f"phone-{i}", store_id="mimit-12345", offer_id="uci-85123A",
                                               visit_id=f"vis_{i:026d}", decision_id=f"dec_{i:026d}", status="sent",
                                               provider="fcm", attempts=1, ts=now).to_stream_fields(),
        "push_job": lambda i: PushJobV1(job_id=f"job_{i:026d}", idempotency_key=f"customer-{i}:mimit-12345:vis_{i:026d}",
                                        customer_id=f"customer-{i}", device_id=f"phone-{i}", platform="android",
                                        push_token="f" * 160, title="An offer near you",
                                        body="White hanging heart T-light holder, now 2.29",
                                        data=PushDataV1(offer_id="uci-85123A", store_id="mimit-12345",
                                                        visit_id=f"vis_{i:026d}", decision_id=f"dec_{i:026d}"),
                                        collapse_key=f"vis_{i:026d}", created_at=now,
                                        expires_at=now + 900).to_stream_fields(),
    }
    out = {}
    for name, make in samples.items():
        key = f"cap:{name}"
        pipe = r.pipeline(transaction=False)
        raw = 0
        for i in range(n):
            fields = make(i)
            raw += sum(len(k) + len(v) for k, v in fields.items())
            pipe.xadd(key, fields)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        out[name] = {"bytes_per_entry": round((r.memory_usage(key, samples=0) or 0) / n),
                     "payload_bytes_per_entry": round(raw / n)}
        r.delete(key)
    return out


def section_history(url: str, customers: int) -> dict:
    import asyncio

    from vicino.services.kernel.contracts.interactions import InteractionV1
    from vicino.services.runtime.redis_client import open_async
    from vicino.services.recommender.adapters.customer_repository import CustomerRepository
    from vicino.services.recommender.settings import RecommenderSettings

    channels, types = ("web", "app", "store", "email"), ("view", "add_to_cart", "purchase", "view", "view")

    async def at(per: int) -> int:
        s = RecommenderSettings(redis_url=url, admin_token=ADMIN, token_secret=SECRET, history_hot_per_customer=per)
        r = open_async(url)
        try:
            repo, now, total = CustomerRepository(r, s), time.time(), 0
            for c in range(customers):
                await repo.append([InteractionV1(event_id=f"h{per}-{c}-{i}", customer_id=f"h{per}-{c}",
                                                 channel=channels[i % 4], type=types[i % 5],
                                                 item_id=f"sku-{(c * 7 + i) % 3000}", quantity=1, value=2.5,
                                                 store_id="store-42" if i % 4 == 2 else None,
                                                 ts=now - 86_400 + i * 60, received_at=now) for i in range(per)],
                                  log=False, now=now)
            for c in range(customers):
                k = repo.keys(f"h{per}-{c}")
                for key in (k.history, k.events, k.seen):
                    total += await r.memory_usage(key, samples=0) or 0
            return round(total / customers)
        finally:
            await r.aclose()

    return {str(per): asyncio.run(at(per)) for per in (20, 50, 100, 200)}


def section_pushes(url: str, n: int) -> dict:
    """What one decided and delivered push leaves in Redis, written by the services' own
    repositories and scripts: the recommender worker's decision (decided visit, push counters,
    the decisions stream entry) and the push gateway's delivery (record, index, owner, the
    `queued` and `sent` receipts). The push job itself is left out: its stream is trimmed once
    the gateway has acknowledged it (its size is in the entries table)."""
    import asyncio
    import random

    from vicino.services.kernel.contracts.interactions import customer_shard
    from vicino.services.kernel.contracts.deliveries import delivery_id_for
    from vicino.services.kernel.contracts.push_jobs import push_jobs_stream_key
    from vicino.services.runtime.redis_client import open_async
    from vicino.services.push_gateway.adapters.delivery_repository import DeliveryRepository
    from vicino.services.push_gateway.domain import delivery as dl
    from vicino.services.push_gateway.domain.outcomes import Delivered
    from vicino.services.push_gateway.domain.retry_policy import RetryPolicy
    from vicino.services.recommender.adapters.decision_repository import DecisionRepository

    shards = 16

    async def run() -> dict:
        r = open_async(url)
        try:
            key = b"bench erasure register key......"  # no erasure is looked up by these measures
            decisions = DecisionRepository(r, shards, decision_ttl_s=604_800, store_cooldown_s=21_600, erasure_key=key)
            deliveries = DeliveryRepository(r, shards, shards, retention_s=2_592_000, erasure_key=key)
            now = time.time()
            day_start = now - now % 86_400

            async def push(i: int, visit: int) -> None:
                cust, vis = f"push-cust-{i}", f"vis_{visit}_{i:024d}"
                dec, job_id, store = f"dec_{visit}_{i:024d}", f"job_{visit}_{i:024d}", f"mimit-{12345 + visit}"
                job = PushJobV1(job_id=job_id, idempotency_key=f"{cust}:{store}:{vis}", customer_id=cust,
                                device_id=f"phone-{i}", platform="android", push_token="f" * 160,
                                title="An offer near you", body="White hanging heart T-light holder, now 2.29",
                                data=PushDataV1(offer_id="uci-85123A", store_id=store, visit_id=vis, decision_id=dec),
                                collapse_key=vis, created_at=now, expires_at=now + 900)
                decision = DecisionV1(decision_id=dec, customer_id=cust, device_id=f"phone-{i}", store_id=store,
                                      visit_id=vis, event_id=f"evt_{visit}_{i:024d}", event_type="dwell",
                                      outcome="send", offer_id="uci-85123A", score=1.2345, price=2.29,
                                      currency="GBP", rank_reason="model", model_version="20261126T170059Z-1fb802",
                                      holdout=False, job_id=job_id, ts=now, decided_at=now)
                read = await decisions.counters(cust, vis, store, day_start, now)
                assert await decisions.record(cust, read, day_start, now, decision, job, True) == "ok"
                delivery_id = delivery_id_for(job.idempotency_key, customer_shard(cust, shards))
                rec, _, created = await deliveries.begin(job, dl.DeliveryRecord.from_job(job, delivery_id, now), now)
                assert created
                marked = dl.sending(rec, "fcm", now, 30.0)
                assert await deliveries.save(rec, marked, now, receipt=None) == "ok"
                sent = dl.after_send(marked, Delivered(), RetryPolicy(), now, random.random()).record
                assert await deliveries.save(marked, sent, now, receipt="sent") == "ok"

            async def used_without_jobs() -> int:
                jobs = sum([await r.memory_usage(push_jobs_stream_key(s), samples=0) or 0 for s in range(shards)])
                return int((await r.info("memory"))["used_memory"]) - jobs

            # a customer's first push creates its keys; the next ones only add to them
            marks = [await used_without_jobs()]
            for visit in range(3):
                for i in range(n):
                    await push(i, visit)
                marks.append(await used_without_jobs())
            return {"pushes": 3 * n, "redis_bytes_first_push": round((marks[1] - marks[0]) / n),
                    "redis_bytes_next_push": round((marks[3] - marks[1]) / (2 * n))}
        finally:
            await r.aclose()

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 devices, 5,000 entries")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    n_devices, n_entries = (500, 5_000) if args.quick else (2_000, 20_000)
    info = machine_info()
    print(f"Vicino capacity figures: {info['cpu_count']} CPUs, Python {info['python']}, {info['date']}")
    with tempfile.TemporaryDirectory(prefix="vicino-bench-capacity-") as tmp, \
            EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        r = redis.Redis.from_url(server.url)
        with served_service("geo", server.url, Path(tmp), admin_token=ADMIN, token_secret=SECRET) as url:
            log("stores")
            stores = section_stores(r, url)
            log(f"{n_devices:,} devices")
            devices = section_devices(r, url, n_devices)
        log("stream entries")
        entries = section_entries(r, n_entries)
        log("decided and delivered pushes")
        pushes = section_pushes(server.url, 500 if args.quick else 2_000)
        log("hot history")
        history = section_history(server.url, 100 if args.quick else 300)
    results = {"machine": info, "stores": stores, "devices": devices, "entries": entries, "pushes": pushes,
               "hot_history_bytes_per_customer": history}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table("Memory per unit", ["unit", "Redis bytes", "payload (floor)", "ratio", "notes"], [
        ["store", f"{stores['redis_bytes_per_store']:,}", f"{stores['geojson_bytes_per_store']:,}",
         f"{stores['redis_bytes_per_store'] / stores['geojson_bytes_per_store']:.1f}x",
         f"geo replica RSS +{stores['geo_rss_bytes_per_store']:,} B per store (its index)"],
        ["active device (+ its customer)", f"{devices['redis_bytes_per_device']:,}", "", "",
         ", ".join(f"{k} {v}" for k, v in devices["by_key"].items()) + f"; events {devices['event_stream_bytes_per_device']}"],
        *[[f"{name} stream entry", f"{e['bytes_per_entry']:,}", f"{e['payload_bytes_per_entry']:,}",
           f"{e['bytes_per_entry'] / e['payload_bytes_per_entry']:.1f}x", ""] for name, e in entries.items()],
        ["push decided and delivered, a customer's first", f"{pushes['redis_bytes_first_push']:,}", "", "",
         "decision + its stream entry + delivery record, index, owner, 2 receipts; not the push job"],
        ["push decided and delivered, the next ones", f"{pushes['redis_bytes_next_push']:,}", "", "",
         "the same customer's 2nd and 3rd (the per-customer keys exist)"],
        *[[f"customer, {per} hot interactions", f"{b:,}", "", "", "history + events + dedup window"]
          for per, b in history.items()],
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
