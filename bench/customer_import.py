"""Benchmark of bringing customers in from a CRM: `python -m bench.customer_import`.

100,000 generated customers (an e-mail, a phone number and a loyalty card each, the three
consent purposes, a locale and a country) in a CSV, imported through the code path of
`vicino customers import` (read_customers, then import_customers: batches of 1,000, 4 in flight)
against a real stack: `vicino serve recommender` and `vicino serve geo` (one worker each) on one
Redis. Beside it, measured in the same run, round by round:

1. floor_redis  the same customers' writes straight into Redis (redis-py's synchronous pipeline,
                1,000 customers a trip), with no checks at all: the three directory entries and the identifier set, the
                attributes hash, the consent hash and its audit entry (what the import writes,
                without reading anything first)
2. parse        read_customers alone (the CSV read and judged row by row, nothing sent)
3. import       the whole import: parse, then every batch through the recommender and geo
4. reimport     the same file again (every customer `updated`: the idempotent path)

Each round imports customers of its own (new ids), so the rounds do the same work. Tables go to
stdout, numbers to bench/results/customer_import.json. `--quick`: 20,000 customers, one round.
All traffic is on 127.0.0.1; every loop is bounded.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from bench.geo import machine_info, pf, table
from testbed.processes import ADMIN_TOKEN, served_service
from vicino.services.cli.customers import COLUMNS, import_customers, read_customers
from vicino.services.kernel.contracts.customer_state import consent_key, consent_log_key
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from vicino.services.recommender.adapters.redis_keys import CustomerKeys, identifier_key

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "customer_import.json"
T_IMPORT_S = 60.0  # 100,000 customers: under a minute (the issue asks "well under"; see the README figure)
LOCALES = [("it-IT", "IT"), ("en-GB", "GB"), ("de-DE", "DE"), ("fr", "FR"), ("es-ES", "ES")]
SHARDS = 16  # the recommender's default VICINO_CUSTOMER_SHARDS


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def phone(series: int, i: int) -> str:
    """A number of its own per customer and series (the rounds and the floor never share one)."""
    return f"+39 3{series:02d}{i:07d}"


def write_crm_file(path: Path, prefix: str, series: int, n: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(n):
            locale, country = LOCALES[i % len(LOCALES)]
            w.writerow([f"{prefix}-{i:06d}", f"{prefix}.{i}@example.com", phone(series, i), f"{prefix.upper()}-L{i:07d}",
                        "yes" if i % 3 else "no", "true" if i % 2 else "false", "1", locale, country])


def floor_redis(url: str, prefix: str, series: int, n: int) -> None:
    r = redis.Redis.from_url(url)  # the synchronous client: the cheapest pipeline redis-py has
    try:
        now = repr(time.time())
        for start in range(0, n, 1000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(n, start + 1000)):
                cid = f"{prefix}-{i:06d}"
                k = CustomerKeys(cid, SHARDS)
                idents = ["email_sha256:" + hashlib.sha256(f"{prefix}.{i}@example.com".encode()).hexdigest(),
                          "phone_sha256:" + hashlib.sha256(phone(series, i).replace(" ", "").encode()).hexdigest(),
                          f"loyalty_card:{prefix.upper()}-L{i:07d}"]
                for ident in idents:
                    pipe.set(identifier_key(ident, SHARDS), cid)
                pipe.sadd(k.identifiers, *idents)
                pipe.hset(k.attributes, mapping={"locale": "it-IT", "country": "IT", "updated_at": now})
                pipe.hset(consent_key(cid), mapping={"location": "1", "marketing": "1", "personalisation": "1",
                                                     "updated_at": now, "v": 1, "seq": 1})
                pipe.lpush(consent_log_key(cid), json.dumps({"location": "1", "at": now, "by": "bench"}))
            pipe.execute()
    finally:
        r.close()


async def import_file(url: str, path: Path) -> dict:
    t0 = time.perf_counter()
    read = read_customers(path)
    parsed = time.perf_counter() - t0
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                 timeout=120) as client:
        report = await import_customers(client, read.rows)
    return {"seconds": time.perf_counter() - t0, "parse_s": parsed, "created": report.created,
            "updated": report.updated, "rejected": len(report.rejected) + len(read.unreadable)}


def one_round(n: int, number: int, redis_url: str, rec_url: str, tmp: Path) -> dict:
    prefix = f"r{number}"
    path = tmp / f"{prefix}.csv"
    write_crm_file(path, prefix, 2 * number + 10, n)
    res: dict = {}
    t = time.perf_counter()
    floor_redis(redis_url, "floor" + prefix, 2 * number + 11, n)
    res["floor_redis"] = time.perf_counter() - t
    t = time.perf_counter()
    read_customers(path)
    res["parse"] = time.perf_counter() - t
    first = asyncio.run(import_file(rec_url, path))
    again = asyncio.run(import_file(rec_url, path))
    assert (first["created"], first["rejected"]) == (n, 0), first
    assert (again["updated"], again["rejected"]) == (n, 0), again
    res["import"], res["reimport"] = first["seconds"], again["seconds"]
    res["_import"], res["_reimport"] = first, again
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.customer_import", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 customers, one round")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    n, rounds = (20_000, 1) if args.quick else (100_000, 3)
    info = machine_info()
    print(f"Vicino customer import benchmark: {info['cpu_count']} CPUs, Python {info['python']}, {info['date']}")
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vicino-bench-crm-") as tmp_name:
        tmp = Path(tmp_name)
        with EmbeddedRedis(tmp / "redis", persist=False) as server, \
                served_service("geo", server.url, tmp) as geo_url, \
                served_service("recommender", server.url, tmp, env={"VICINO_GEO_URL": geo_url,
                                                                    "VICINO_HISTORY_DIR": str(tmp / "history"),
                                                                    "VICINO_MODEL_DIR": str(tmp / "models")}) as rec_url:
            for i in range(rounds):
                log(f"round {i + 1}/{rounds}: {n:,} customers")
                runs.append(one_round(n, i + 1, server.url, rec_url, tmp))
    names = ["floor_redis", "parse", "import", "reimport"]
    median = {k: statistics.median(r[k] for r in runs) for k in names}
    results = {
        "machine": info, "profile": "quick" if args.quick else "full", "rounds": rounds, "customers": n,
        "identifiers_per_customer": 3, "batch": 1000, "in_flight": 4,
        "seconds": {k: [round(r[k], 3) for r in runs] for k in names},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "customers_per_s": {k: round(n / v) for k, v in median.items()},
        "import_vs_floor_redis": round(median["import"] / median["floor_redis"], 1),
        "target": {"value": round(median["import"], 1), "target": f"< {T_IMPORT_S:g} s for {n:,} customers",
                   "pass": median["import"] < T_IMPORT_S * n / 100_000},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    what = {"floor_redis": "raw pipelined Redis writes (floor)", "parse": "read_customers (CSV, judged)",
            "import": "vicino customers import", "reimport": "the same file again (updates)"}
    rows = [[what[k], f"{median[k]:.2f}", f"{n / median[k]:,.0f}", f"{median[k] / median['floor_redis']:.1f}x",
             " ".join(f"{r[k]:.2f}" for r in runs)] for k in names]
    print()
    print(table(f"{n:,} customers, 3 identifiers, consent and locale each (median of {rounds})",
                ["step", "seconds", "customers/s", "vs floor", "rounds"], rows))
    print(f"target: import {median['import']:.1f} s {results['target']['target']}: {pf(results['target']['pass'])}")
    print(f"JSON: {args.out}  (elapsed {results['elapsed_s']:.0f} s)")
    return 0 if results["target"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
