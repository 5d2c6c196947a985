"""What the rate limiter costs on the phone's hot path: `python -m bench.rate_limit`.

`POST /v1/locations` of the real geo service (uvicorn, 1 worker, one Redis) with the per-device
rate limit on (the defaults: one GCRA script in Redis per request) against the same service with
it off (`VICINO_RATE_LIMITS=false`), in the same run, on the same Redis, devices and stores,
driven by bench.geo's raw-socket keep-alive load client in its own process. The two servers
take turns, round after round (single fixes, then batches of 50), so that the machine's noise
falls on both. The devices are many enough that none is ever over its limit: what is measured
is the price of the check that admits, i.e. what every phone pays.

Target: the limiter costs at most 5% of the single-fix throughput (the worst case: a batch
spreads the same check over 50 fixes). Figures to stdout, numbers to bench/results/rate_limit.json.
Every loop is bounded in count and time, all traffic is on 127.0.0.1, about three minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench._paired import alternate_rounds, compare, load_base, register_world
from bench.geo import ADMIN_TOKEN, TOKEN_SECRET, Uvicorn, log, machine_info, table
from vicino.services.launcher.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "rate_limit.json"
T_COST_PCT = 5.0  # the limiter may cost at most this share of single-fix throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short round (to try the script out)")
    args = ap.parse_args()
    stores, devices, customers = (2_000, 4_000, 200) if not args.quick else (1_000, 1_000, 50)
    rounds, warm_s, measure_s = (3, 2.0, 6.0) if not args.quick else (1, 1.0, 2.0)
    conns, batch = 16, 50
    results: dict = {"machine": machine_info(), "profile": "quick" if args.quick else "full"}
    print(f"Vicino rate limit benchmark ({results['profile']}): {results['machine']['cpu_count']} CPUs, "
          f"Python {results['machine']['python']}, {results['machine']['date']}")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vicino-bench-rl-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = EmbeddedRedis(tmp / "redis", persist=False).start()
        if pin:
            os.sched_setaffinity(redis_server.proc.pid, {client_cpu})
        env = {**os.environ, "VICINO_REDIS_URL": redis_server.url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
               "VICINO_TOKEN_SECRET": TOKEN_SECRET, "VICINO_LOG_LEVEL": "WARNING"}
        for name in [k for k in env if k.startswith("VICINO_RATE_LIMIT")]:
            env.pop(name)  # the defaults, as deployed
        servers = {"unlimited": Uvicorn("unlimited", "vicino.services.geo.app:create_app",
                                        {**env, "VICINO_RATE_LIMITS": "false"}, tmp, server_cpu),
                   "limited": Uvicorn("limited", "vicino.services.geo.app:create_app", env, tmp, server_cpu)}
        try:
            for s in servers.values():
                s.wait_ready("/readyz")
            results["uvicorn"] = servers["limited"].settings
            world, phones = register_world(servers["limited"].port, stores, devices, customers, "rl")
            time.sleep(1.0)  # both servers' indexes follow the store change log
            log(f"{stores:,} stores, {devices:,} devices registered with consent")
            base = load_base(world, stores, phones, warm_s=warm_s, measure_s=measure_s, conns=conns,
                             client_cpu=client_cpu)
            results["rounds"] = alternate_rounds(servers, base, rounds=rounds, batch=batch,
                                                 redis_pid=redis_server.proc.pid)
        finally:
            for s in servers.values():
                s.stop()
            redis_server.stop()

    summary = compare(results["rounds"], "limited", "unlimited")
    single = summary["single"]
    cost = 100.0 - single["limited_pct_of_unlimited_best"] if single["limited_pct_of_unlimited_best"] else None
    results["summary"] = summary
    results["targets"] = {"single_fix_throughput_cost_pct": {
        "value": None if cost is None else round(cost, 1), "target": f"<= {T_COST_PCT:g}%",
        "pass": cost is not None and cost <= T_COST_PCT}}
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    rows = []
    for mode, label in (("single", "POST /v1/locations, 1 fix"), ("batch", f"POST /v1/locations, {batch} fixes")):
        s = summary[mode]
        rows.append([label, f"{s['unlimited_req_per_s_best']:,.0f}", f"{s['limited_req_per_s_best']:,.0f}",
                     f"{s['limited_pct_of_unlimited_best']}%", f"{s['limited_pct_of_unlimited_median_of_rounds']}%",
                     f"{s['server_cpu_us_per_req']['unlimited']} / {s['server_cpu_us_per_req']['limited']}",
                     f"{s['redis_cpu_us_per_req']['unlimited']} / {s['redis_cpu_us_per_req']['limited']}",
                     s["refused_429"]])
    print(table(f"Rate limiter on vs off, 1 uvicorn worker each, {devices:,} devices, {len(results['rounds'])} rounds",
                ["request", "off req/s", "on req/s", "on/off (best)", "on/off (median round)",
                 "server µs/req off / on", "redis µs/req off / on", "429s"], rows))
    t = results["targets"]["single_fix_throughput_cost_pct"]
    print(f"  cost on single-fix throughput: {t['value']}% (target {t['target']}): {'PASS' if t['pass'] else 'FAIL'}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
