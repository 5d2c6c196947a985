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

import json
import sys
from pathlib import Path

from bench._paired import compare, run_pair
from bench.geo import Uvicorn, table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "rate_limit.json"
T_COST_PCT = 5.0  # the limiter may cost at most this share of single-fix throughput


def main() -> None:
    def servers(env: dict, tmp: Path, cpu: int | None) -> dict[str, Uvicorn]:
        return {"unlimited": Uvicorn("unlimited", "vicino.services.geo.app:create_app",
                                     {**env, "VICINO_RATE_LIMITS": "false"}, tmp, cpu),
                "limited": Uvicorn("limited", "vicino.services.geo.app:create_app", env, tmp, cpu)}

    results = run_pair(__doc__, "rate limit", servers, setup_via="limited", prefix="rl")
    devices, batch = results["devices"], results["batch"]
    summary = compare(results["rounds"], "limited", "unlimited")
    single = summary["single"]
    cost = 100.0 - single["limited_pct_of_unlimited_best"] if single["limited_pct_of_unlimited_best"] else None
    results["summary"] = summary
    results["targets"] = {"single_fix_throughput_cost_pct": {
        "value": None if cost is None else round(cost, 1), "target": f"<= {T_COST_PCT:g}%",
        "pass": cost is not None and cost <= T_COST_PCT}}

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
