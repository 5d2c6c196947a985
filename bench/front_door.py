"""What the front door costs on the phone's hot path: `python -m bench.front_door`.

`POST /v1/locations` through the front door (`vicino serve front`: every public service's app in
one process, dispatched by the routing table) against the geo service served directly, both
uvicorn with 1 worker on the same CPU, in the same run, on the same Redis, stores and phones,
driven by bench.geo's raw-socket keep-alive load client in its own process. The two take turns
round after round (single fixes, then batches of 50).

Target: through the front door at least 80% of direct throughput on single fixes (the worst
case). Figures to stdout, numbers to bench/results/front_door.json. Every loop is bounded in
count and time, all traffic is on 127.0.0.1, about three minutes.
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
OUT = ROOT / "bench" / "results" / "front_door.json"
T_FRONT_PCT = 80.0  # through the front door: at least this share of direct single-fix throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short round (to try the script out)")
    args = ap.parse_args()
    stores, devices, customers = (2_000, 4_000, 200) if not args.quick else (1_000, 1_000, 50)
    rounds, warm_s, measure_s = (3, 2.0, 6.0) if not args.quick else (1, 1.0, 2.0)
    conns, batch = 16, 50
    results: dict = {"machine": machine_info(), "profile": "quick" if args.quick else "full"}
    print(f"Vicino front door benchmark ({results['profile']}): {results['machine']['cpu_count']} CPUs, "
          f"Python {results['machine']['python']}, {results['machine']['date']}")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vicino-bench-front-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = EmbeddedRedis(tmp / "redis", persist=False).start()
        if pin:
            os.sched_setaffinity(redis_server.proc.pid, {client_cpu})
        env = {**os.environ, "VICINO_REDIS_URL": redis_server.url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
               "VICINO_TOKEN_SECRET": TOKEN_SECRET, "VICINO_LOG_LEVEL": "WARNING",
               "VICINO_DATA_DIR": str(tmp), "VICINO_MODEL_DIR": str(tmp / "models"),
               "VICINO_HISTORY_DIR": str(tmp / "history")}
        for name in [k for k in env if k.startswith("VICINO_RATE_LIMIT")]:
            env.pop(name)  # the defaults, as deployed, on both
        direct = Uvicorn("direct", "vicino.services.geo.app:create_app", env, tmp, server_cpu)
        servers = {"direct": direct,
                   "front": Uvicorn("front", "vicino.services.front_door.wiring:build_front_door",
                                    {**env, "VICINO_GEO_URL": f"http://127.0.0.1:{direct.port}"}, tmp, server_cpu)}
        try:
            for s in servers.values():
                s.wait_ready("/readyz")
            results["uvicorn"] = direct.settings
            world, phones = register_world(servers["front"].port, stores, devices, customers, "fd")
            time.sleep(1.0)  # both servers' indexes follow the store change log
            log(f"{stores:,} stores, {devices:,} devices registered with consent (through the front door)")
            base = load_base(world, stores, phones, warm_s=warm_s, measure_s=measure_s, conns=conns,
                             client_cpu=client_cpu)
            results["rounds"] = alternate_rounds(servers, base, rounds=rounds, batch=batch,
                                                 redis_pid=redis_server.proc.pid)
            results["rss_mb"] = {name: s.rss_mb() for name, s in servers.items()}
        finally:
            for s in servers.values():
                s.stop()
            redis_server.stop()

    summary = compare(results["rounds"], "front", "direct")
    single = summary["single"]["front_pct_of_direct_best"]
    results["summary"] = summary
    results["targets"] = {"front_pct_of_direct_single_fix": {
        "value": single, "target": f">= {T_FRONT_PCT:g}%", "pass": single is not None and single >= T_FRONT_PCT}}
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    rows = []
    for mode, label in (("single", "POST /v1/locations, 1 fix"), ("batch", f"POST /v1/locations, {batch} fixes")):
        s = summary[mode]
        rows.append([label, f"{s['direct_req_per_s_best']:,.0f}", f"{s['front_req_per_s_best']:,.0f}",
                     f"{s['front_pct_of_direct_best']}%", f"{s['front_pct_of_direct_median_of_rounds']}%",
                     f"{s['server_cpu_us_per_req']['direct']} / {s['server_cpu_us_per_req']['front']}",
                     s["errors"]])
    print(table(f"Front door vs the geo service directly, 1 uvicorn worker each, {devices:,} devices, "
                f"{len(results['rounds'])} rounds",
                ["request", "direct req/s", "front req/s", "front/direct (best)", "front/direct (median round)",
                 "server µs/req direct / front", "errors"], rows))
    print(f"  resident memory: {results['rss_mb']}")
    t = results["targets"]["front_pct_of_direct_single_fix"]
    print(f"  front door on single fixes: {t['value']}% of direct (target {t['target']}): "
          f"{'PASS' if t['pass'] else 'FAIL'}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
