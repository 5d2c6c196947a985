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

import json
import sys
from pathlib import Path

from bench._paired import compare, run_pair
from bench.geo import Uvicorn, table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "front_door.json"
T_FRONT_PCT = 80.0  # through the front door: at least this share of direct single-fix throughput


def main() -> None:
    def servers(env: dict, tmp: Path, cpu: int | None) -> dict[str, Uvicorn]:
        direct = Uvicorn("direct", "vicino.services.geo.app:create_app", env, tmp, cpu)
        return {"direct": direct,
                "front": Uvicorn("front", "vicino.services.front_door.wiring:build_front_door",
                                 {**env, "VICINO_GEO_URL": f"http://127.0.0.1:{direct.port}"}, tmp, cpu)}

    results = run_pair(__doc__, "front door", servers, setup_via="front", prefix="front")
    devices, batch = results["devices"], results["batch"]
    summary = compare(results["rounds"], "front", "direct")
    single = summary["single"]["front_pct_of_direct_best"]
    results["summary"] = summary
    results["targets"] = {"front_pct_of_direct_single_fix": {
        "value": single, "target": f">= {T_FRONT_PCT:g}%", "pass": single is not None and single >= T_FRONT_PCT}}

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
