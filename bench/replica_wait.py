"""What waiting for a replica costs: `python -m bench.replica_wait` (part of `make bench`).

Redis replicates asynchronously: a write a master acknowledged and then lost in a crash, before
its replica had it, is gone after the failover (docs/architecture.md, "What a failover can
lose"). `WAIT 1 <ms>` after a write closes that window for the write and everything before it on
the same master. This measures, on a real 3-master, 3-replica cluster on loopback (AOF every
second), a script shaped like the decision write (a hash and a stream entry in one hash tag)
alone, against the same script followed by `WAIT 1 100`, alternating rounds in the same run.

Table on stdout, numbers in bench/results/replica_wait.json. Bounded: a fixed count per round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from bench.geo import log, machine_info, table
from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "replica_wait.json"
SCRIPT = ("redis.call('HSET', KEYS[1], 'v', ARGV[1]); "
          "redis.call('XADD', KEYS[1] .. ':s', 'MAXLEN', '~', 1000, '*', 'f', ARGV[1]); return 1")


def _percentiles(samples: list[float]) -> dict:
    samples = sorted(samples)
    return {"median_us": round(statistics.median(samples) * 1e6, 1),
            "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1)}


def measure(count: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, \
            EmbeddedRedisCluster(Path(tmp), replicas=1, node_timeout_ms=2000) as cluster:
        node = cluster.nodes[0]
        router = RedisCluster(host="127.0.0.1", port=node.port)
        key = next(k for k in (f"vicino:{{cs:{i:03d}}}:bench" for i in range(4096))
                   if router.get_node_from_key(k).port == node.port)
        router.close()
        client = redis.Redis(port=node.port)
        script = client.register_script(SCRIPT)
        alone: list[float] = []
        waited: list[float] = []
        for _ in range(rounds):  # alternate, so that both see the same machine
            for wait, into in ((False, alone), (True, waited)):
                for i in range(count):
                    t = time.perf_counter()
                    script(keys=[key], args=[i])
                    if wait and client.execute_command("WAIT", 1, 100) < 1:
                        raise RuntimeError("the replica did not acknowledge within 100 ms")
                    into.append(time.perf_counter() - t)
        client.close()
    return {"write": _percentiles(alone), "write_then_wait": _percentiles(waited), "count": count * rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="writes per round and kind")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    log("replica wait: a 3-master, 3-replica cluster on loopback")
    out = measure(a.count, a.rounds)
    w, ww = out["write"], out["write_then_wait"]
    out["wait_adds_median_us"] = round(ww["median_us"] - w["median_us"], 1)
    print(table("a decision-shaped write, alone and followed by WAIT 1 100 (µs)", ["", "median", "p99"],
                [["write", w["median_us"], w["p99_us"]], ["write + WAIT 1", ww["median_us"], ww["p99_us"]]]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_info(), **out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
