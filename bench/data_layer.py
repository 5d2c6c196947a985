"""Benchmarks of the data layer: `python -m bench.data_layer` (part of `make bench`).

Every figure beside a floor or a peer measured in the same run (shared, noisy 2-core machines):

1. api      `POST /v1/interactions` of the real recommender service (uvicorn, 1 worker, Redis),
            batches of 500 new interactions, against two bare endpoints: one that only parses
            the same bodies with orjson, one that also judges every item as the service does
            (everything but Redis); all driven by the same keep-alive clients in their own processes.
2. store    the ingestion script alone (dedup window, hot history, trim, stream append), in
            process, against the floor of appending the same entries to a stream with a
            pipelined XADD and nothing else.
3. memory   Redis bytes per customer of hot history (200 interactions: history, events, dedup
            window), against the bytes of the same interactions as compact JSON.

Tables on stdout, numbers in bench/results/data_layer.json. Loops bounded in count and time,
traffic on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.geo import log, machine_info, table
from vicino.services.kernel.contracts.interactions import InteractionV1
from vicino.services.launcher.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "data_layer.json"
ADMIN = "bench-admin-token-0123456789"
SECRET = "bench-token-secret-0123456789abcdef"
TYPES = ("view", "view", "view", "add_to_cart", "purchase")
CHANNELS = ("web", "app", "store", "email")


def make_batch(tag: str, n: int, size: int, customers: int) -> bytes:
    now = time.time() - 3600
    return orjson.dumps([{"event_id": f"{tag}-{n}-{i}", "customer_id": f"c{(n * size + i) % customers}",
                          "channel": CHANNELS[i % 4], "type": TYPES[i % 5], "item_id": f"sku-{i % 97}",
                          "quantity": 1, "value": 2.5, "ts": now + i} for i in range(size)])


def _client(port: int, tag: str, batches: int, size: int, customers: int, seconds: float, q) -> None:
    bodies = [make_batch(tag, n, size, customers) for n in range(batches)]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    sent = accepted = 0
    t0 = time.perf_counter()
    for body in bodies:  # bounded in count and in time
        if time.perf_counter() - t0 > seconds:
            break
        conn.request("POST", "/v1/interactions", body=body, headers=headers)
        r = conn.getresponse()
        doc = orjson.loads(r.read())
        assert r.status == 200, doc
        accepted += doc["accepted"]
        sent += 1
    q.put((accepted, time.perf_counter() - t0))


def drive(port: int, label: str, clients: int, batches: int, size: int, customers: int, seconds: float) -> dict:
    q = mp.Queue()
    procs = [mp.Process(target=_client, args=(port, f"{label}{k}", batches, size, customers, seconds, q))
             for k in range(clients)]
    for p in procs:
        p.start()
    got = [q.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    accepted = sum(a for a, _ in got)
    elapsed = max(t for _, t in got)
    return {"interactions": accepted, "seconds": round(elapsed, 2), "per_s": round(accepted / elapsed)}


def serve(cmd: list[str], env: dict, port: int, log_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start: {log_path.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def section_api(redis_url: str, tmp: Path, cfg: dict) -> dict:
    env = {**os.environ, "VICINO_REDIS_URL": redis_url, "VICINO_ADMIN_TOKEN": ADMIN, "VICINO_TOKEN_SECRET": SECRET,
           "VICINO_LOG_LEVEL": "WARNING", "VICINO_HISTORY_DIR": str(tmp / "history")}
    out = {}
    bare = [sys.executable, "-m", "uvicorn", "bench._bare_app:create_ingest_app", "--factory",
            "--log-level", "warning", "--no-access-log"]
    for label, cmd, extra in (
            ("bare", bare, {}),
            ("bare_validate", bare, {"VICINO_BENCH_VALIDATE": "1"}),
            ("service", [sys.executable, "-m", "vicino.services.cli", "serve", "recommender"], {})):
        port = free_port()
        full = cmd + ["--host", "127.0.0.1", "--port", str(port)]
        proc = serve(full, {**env, **extra}, port, tmp / f"{label}.log")
        try:
            drive(port, "warm" + label, 1, 4, 500, cfg["customers"], 5)
            out[label] = drive(port, label, cfg["clients"], cfg["batches"], 500, cfg["customers"], cfg["seconds"])
        finally:
            stop(proc)
        log(f"api {label}: {out[label]}")
    out["ratio_to_bare"] = round(out["service"]["per_s"] / out["bare"]["per_s"], 3)
    out["ratio_to_bare_validate"] = round(out["service"]["per_s"] / out["bare_validate"]["per_s"], 3)
    return out


async def _store_section(redis_url: str, cfg: dict) -> dict:
    from vicino.services.runtime.redis_client import open_async
    from vicino.services.recommender.adapters.customer_repository import CustomerRepository
    from vicino.services.recommender.settings import RecommenderSettings

    settings = RecommenderSettings(redis_url=redis_url, admin_token=ADMIN, token_secret=SECRET)
    r = open_async(redis_url)
    try:
        repo = CustomerRepository(r, settings)
        now = time.time()
        n = cfg["store_items"]
        items = [InteractionV1(event_id=f"s-{i}", customer_id=f"s{i % cfg['customers']}", channel=CHANNELS[i % 4],
                               type=TYPES[i % 5], item_id=f"sku-{i % 97}", quantity=1, value=2.5, ts=now - n + i,
                               received_at=now) for i in range(n)]
        payloads = [i.to_stream_fields() for i in items]
        t0 = time.perf_counter()
        for k in range(0, n, 500):
            await repo.append(items[k:k + 500], log=True, now=now)
        script_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in range(0, n, 500):
            pipe = r.pipeline(transaction=False)
            for p in payloads[k:k + 500]:
                pipe.xadd("bench:{floor}:stream", p)
            await pipe.execute()
        floor_s = time.perf_counter() - t0
        return {"interactions": n, "script_per_s": round(n / script_s), "xadd_floor_per_s": round(n / floor_s),
                "ratio_to_floor": round(floor_s / script_s, 3)}
    finally:
        await r.aclose()


async def _memory_section(redis_url: str, cfg: dict) -> dict:
    from vicino.services.runtime.redis_client import open_async
    from vicino.services.recommender.adapters.customer_repository import CustomerRepository, hot_entry
    from vicino.services.recommender.settings import RecommenderSettings

    settings = RecommenderSettings(redis_url=redis_url, admin_token=ADMIN, token_secret=SECRET)
    r = open_async(redis_url)
    try:
        await r.flushall()
        repo = CustomerRepository(r, settings)
        per = settings.history_hot_per_customer
        customers = cfg["memory_customers"]
        now = time.time()
        raw_bytes = 0
        for c in range(customers):
            items = [InteractionV1(event_id=f"m-{c}-{i}", customer_id=f"mem{c}", channel=CHANNELS[i % 4],
                                   type=TYPES[i % 5], item_id=f"sku-{(c * 7 + i) % 3000}", quantity=1, value=2.5,
                                   store_id="store-42" if i % 4 == 2 else None, ts=now - 86_400 + i * 60,
                                   received_at=now) for i in range(per)]
            raw_bytes += sum(len(hot_entry(i)) for i in items)
            await repo.append(items, log=True, now=now)
        used = {"history": 0, "events": 0, "seen": 0}
        for c in range(customers):
            k = repo.keys(f"mem{c}")
            for name in used:
                used[name] += await r.memory_usage(getattr(k, name), samples=0) or 0
        total = sum(used.values())
        return {"customers": customers, "interactions_per_customer": per,
                "bytes_per_customer": round(total / customers),
                "bytes_per_customer_by_key": {k: round(v / customers) for k, v in used.items()},
                "json_bytes_per_customer": round(raw_bytes / customers),
                "ratio_to_json": round(total / raw_bytes, 2)}
    finally:
        await r.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.data_layer", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cfg = ({"clients": 2, "batches": 40, "seconds": 4.0, "customers": 2000, "store_items": 20_000,
            "memory_customers": 200} if args.quick else
           {"clients": 2, "batches": 300, "seconds": 15.0, "customers": 20_000, "store_items": 100_000,
            "memory_customers": 1000})
    results: dict = {"machine": machine_info(), "profile": "quick" if args.quick else "full", "config": cfg}
    with tempfile.TemporaryDirectory(prefix="vicino-bench-dl-") as tmpdir:
        tmp = Path(tmpdir)
        redis = EmbeddedRedis(tmp / "redis", persist=False).start()
        try:
            results["api"] = section_api(redis.url, tmp, cfg)
            results["store"] = asyncio.run(_store_section(redis.url, cfg))
            results["memory"] = asyncio.run(_memory_section(redis.url, cfg))
        finally:
            redis.stop()
    a, s, m = results["api"], results["store"], results["memory"]
    print(table("POST /v1/interactions, batches of 500 (2 client processes, 1 server worker)",
                ["endpoint", "interactions/s", "vs bare"],
                [["bare: parse and count", f"{a['bare']['per_s']:,}", "1.00"],
                 ["bare: parse and judge every item", f"{a['bare_validate']['per_s']:,}",
                  f"{a['bare_validate']['per_s'] / a['bare']['per_s']:.2f}"],
                 ["recommender service", f"{a['service']['per_s']:,}",
                  f"{a['ratio_to_bare']:.2f} ({a['ratio_to_bare_validate']:.2f} of parse and judge)"]]))
    print(table("Ingestion script in process (dedup window, hot history, trim, stream append)",
                ["path", "interactions/s", "vs floor"],
                [["XADD pipelined (floor)", f"{s['xadd_floor_per_s']:,}", "1.00"],
                 ["ingestion script", f"{s['script_per_s']:,}", f"{s['ratio_to_floor']:.2f}"]]))
    print(table(f"Redis memory per customer of hot history ({m['interactions_per_customer']} interactions)",
                ["what", "bytes", "vs JSON"],
                [["compact JSON of the interactions", f"{m['json_bytes_per_customer']:,}", "1.00"],
                 ["Redis (history + events + dedup window)", f"{m['bytes_per_customer']:,}",
                  f"{m['ratio_to_json']:.2f}"]]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"raw numbers: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
