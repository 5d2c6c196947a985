"""Two geo servers measured in turns on the same Redis, stores and phones (`POST /v1/locations`,
single fixes then batches): the frame of bench.rate_limit (limiter on vs off) and
bench.front_door (through the front door vs the geo service directly). The turns alternate
their order round after round, so that the machine's noise falls on both."""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import orjson

from bench.geo import ADMIN_TOKEN, TOKEN_SECRET, Http, Uvicorn, World, log, machine_info, run_load
from vicino.services.launcher.embedded_redis import EmbeddedRedis

BATCH = 50  # fixes per request of the batch mode


def run_pair(doc: str, title: str, make_servers: Callable[[dict, Path, int | None], dict[str, Uvicorn]], *,
             setup_via: str, prefix: str) -> dict:
    """The whole frame of a paired benchmark (`--quick` for one short round): one Redis, the
    two servers `make_servers(env, tmp, server_cpu)` builds (exactly two, on one core; Redis
    and the load client on the other), stores and phones registered through `setup_via`, the
    alternating rounds. The results: machine, profile, uvicorn settings, rounds, resident memory
    and elapsed seconds."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short round (to try the script out)")
    quick = ap.parse_args().quick
    stores, devices, customers = (1_000, 1_000, 50) if quick else (2_000, 4_000, 200)
    rounds, warm_s, measure_s = (1, 1.0, 2.0) if quick else (3, 2.0, 6.0)
    results: dict = {"machine": machine_info(), "profile": "quick" if quick else "full",
                     "stores": stores, "devices": devices, "batch": BATCH}
    print(f"Vicino {title} benchmark ({results['profile']}): {results['machine']['cpu_count']} CPUs, "
          f"Python {results['machine']['python']}, {results['machine']['date']}")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"vicino-bench-{prefix}-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = EmbeddedRedis(tmp / "redis", persist=False).start()
        if pin:
            os.sched_setaffinity(redis_server.proc.pid, {client_cpu})
        env = {**os.environ, "VICINO_REDIS_URL": redis_server.url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
               "VICINO_TOKEN_SECRET": TOKEN_SECRET, "VICINO_LOG_LEVEL": "WARNING",
               "VICINO_DATA_DIR": str(tmp), "VICINO_MODEL_DIR": str(tmp / "models"),
               "VICINO_HISTORY_DIR": str(tmp / "history")}
        for name in [k for k in env if k.startswith("VICINO_RATE_LIMIT")]:
            env.pop(name)  # the defaults, as deployed
        servers = make_servers(env, tmp, server_cpu)
        try:
            for server in servers.values():
                server.wait_ready("/readyz")
            results["uvicorn"] = servers[setup_via].settings
            world, phones = register_world(servers[setup_via].port, stores, devices, customers, prefix)
            time.sleep(1.0)  # both servers' indexes follow the store change log
            log(f"{stores:,} stores, {devices:,} devices registered with consent (through {setup_via})")
            base = load_base(world, stores, phones, warm_s=warm_s, measure_s=measure_s, conns=16,
                             client_cpu=client_cpu)
            results["rounds"] = alternate_rounds(servers, base, rounds=rounds, batch=BATCH,
                                                 redis_pid=redis_server.proc.pid)
            results["rss_mb"] = {name: server.rss_mb() for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
            redis_server.stop()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def register_world(port: int, stores: int, devices: int, customers: int, prefix: str) -> tuple[World, list]:
    """`stores` fences, `devices` phones of `customers` customers with every consent: (world, [(device, token)])."""
    h = Http(port, timeout=120)
    world = World(stores)
    status, body = h.call("POST", "/v1/stores", {"type": "FeatureCollection",
                                                  "features": [world.feature(i) for i in range(stores)]}, ADMIN_TOKEN)
    if status != 200:
        raise RuntimeError(f"loading stores: {status} {body[:300]!r}")
    phones = []
    for d in range(devices):
        did, cid = f"{prefix}-{d:05d}", f"{prefix}c-{d % customers:04d}"
        status, body = h.call("POST", "/v1/devices", {"device_id": did, "customer_id": cid,
                                                      "platform": "android", "push_token": "tok-" + did}, ADMIN_TOKEN)
        if status != 201:
            raise RuntimeError(f"registering {did}: {status} {body[:300]!r}")
        phones.append((did, orjson.loads(body)["token"]))
    for c in range(customers):
        status, body = h.call("PUT", f"/v1/customers/{prefix}c-{c:04d}/consent",
                              {"location": True, "marketing": True, "personalisation": True}, ADMIN_TOKEN)
        if status != 200:
            raise RuntimeError(f"consent {prefix}c-{c:04d}: {status} {body[:300]!r}")
    h.close()
    return world, phones


def load_base(world: World, stores: int, phones: list, *, warm_s: float, measure_s: float, conns: int,
              client_cpu: int | None) -> dict:
    circ = [i for i in range(stores) if not world.poly[i]]
    return {"c_lat": [float(world.lat[i]) for i in circ], "c_lon": [float(world.lon[i]) for i in circ],
            "c_r": [float(world.radius[i]) for i in circ], "half_km": world.half_km(stores),
            "warm_s": warm_s, "measure_s": measure_s, "cpu": client_cpu, "ts_step": 0.01,
            "conns": conns, "devices": phones, "cycle": False}


def alternate_rounds(servers: dict, base: dict, *, rounds: int, batch: int, redis_pid: int) -> list[dict]:
    """`servers`: exactly two, name -> bench.geo.Uvicorn. Per round and mode ("single", "batch"),
    each server's load result under `<name>_<mode>`."""
    names = list(servers)
    last_ts = time.time() - 240
    out = []
    for rnd in range(rounds):
        this: dict = {}
        for mode, n_fixes in (("single", 1), ("batch", batch)):
            for who in (names if rnd % 2 == 0 else names[::-1]):
                server = servers[who]
                expect = (5_000 if mode == "single" else 1_000) * (base["warm_s"] + base["measure_s"])
                r = run_load({**base, "port": server.port, "batch": n_fixes,
                              "ts_base": max(last_ts + 0.01, time.time() - 240), "seed": 100 * rnd + len(this),
                              "pool_per_conn": int(expect / base["conns"]),
                              "watch_pids": {"server": server.proc.pid, "redis": redis_pid}})
                if "fatal" in r:
                    raise RuntimeError(f"load client ({who} {mode}): {r['fatal']}")
                last_ts = max(last_ts, r.pop("max_ts"))
                share = r["cpu_share"].get("server") or 0.0
                r["server_cpu_us_per_req"] = round(share / r["req_per_s"] * 1e6, 1) if r["req_per_s"] and share else None
                rshare = r["cpu_share"].get("redis") or 0.0
                r["redis_cpu_us_per_req"] = round(rshare / r["req_per_s"] * 1e6, 1) if r["req_per_s"] and rshare else None
                this[f"{who}_{mode}"] = r
                log(f"round {rnd + 1}: {who:9s} {mode:6s} {r['req_per_s']:8.0f} req/s  p50 {r['p50_ms']} ms  "
                    f"server {r['server_cpu_us_per_req']} µs/req  redis {r['redis_cpu_us_per_req']} µs/req  "
                    f"status {r['status']}")
        out.append(this)
    return out


def compare(rounds: list[dict], subject: str, peer: str) -> dict:
    """Per mode: `subject` against `peer`, best against best and the median of the rounds' ratios."""
    summary: dict = {}
    for mode in ("single", "batch"):
        pairs = [(rr[f"{subject}_{mode}"], rr[f"{peer}_{mode}"]) for rr in rounds]
        ratios = [100.0 * s["req_per_s"] / p["req_per_s"] for s, p in pairs if p["req_per_s"]]
        best_s = max(s["req_per_s"] for s, _ in pairs)
        best_p = max(p["req_per_s"] for _, p in pairs)

        def cpu(who: str, field: str) -> float | None:
            vals = [rr[f"{who}_{mode}"][field] for rr in rounds if rr[f"{who}_{mode}"][field]]
            return min(vals) if vals else None

        summary[mode] = {
            f"{subject}_req_per_s_best": best_s, f"{peer}_req_per_s_best": best_p,
            f"{subject}_pct_of_{peer}_best": round(100.0 * best_s / best_p, 1) if best_p else None,
            f"{subject}_pct_of_{peer}_median_of_rounds": round(statistics.median(ratios), 1) if ratios else None,
            "server_cpu_us_per_req": {subject: cpu(subject, "server_cpu_us_per_req"), peer: cpu(peer, "server_cpu_us_per_req")},
            "redis_cpu_us_per_req": {subject: cpu(subject, "redis_cpu_us_per_req"), peer: cpu(peer, "redis_cpu_us_per_req")},
            "refused_429": sum(rr[f"{subject}_{mode}"]["status"].get(429, 0) for rr in rounds),
            "errors": sum(rr[f"{w}_{mode}"]["errors"] + rr[f"{w}_{mode}"]["closed_early"]
                          for rr in rounds for w in (subject, peer)),
        }
    return summary
