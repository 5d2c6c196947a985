"""Benchmark of the bulk history import: `python -m bench.history`.

Imports the full UCI Online Retail file (541,909 rows; Chen 2015, CC BY 4.0,
doi 10.24432/C5BW33) and reports rows per second beside floors measured in the same run,
interleaved round by round so that a noisy neighbour slows all of them alike:

1. floor_gunzip  gunzip the file alone (Python's gzip, as the import reads it)
2. floor_csv     pyarrow.csv reading the same gzipped file alone, every column a string, one
                 thread: what parsing costs before any mapping or filtering
3. parse         `read_history`: read, map and filter (what `--dry-run` does)
4. import        `HistoryImport.run`: the above, plus the Parquet log (fsync'd, one file per
                 date partition) and the hot history of each customer in a real Redis
5. reimport      the same file again (every hot-history item a duplicate, files replaced)
6. read_back     `read_interactions` of the whole log, as training reads it

Tables go to stdout, the raw numbers to bench/results/history.json. `--quick` runs one round.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import redis
import redis.asyncio as aioredis

from bench.geo import machine_info, pf, table
from vicino.services.kernel.clock import SystemClock
from vicino.services.kernel.contracts.history_file import UCI_COLUMNS, read_history
from vicino.services.kernel.contracts.interaction_log import read_interactions
from vicino.services.launcher.embedded_redis import EmbeddedRedis
from vicino.services.recommender.adapters.customer_repository import CustomerRepository
from vicino.services.recommender.settings import RecommenderSettings
from vicino.services.recommender.use_cases.history_import import HistoryImport

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/datasets/online-retail/online_retail.csv.gz")
RESULTS = ROOT / "bench" / "results" / "history.json"
T_IMPORT_S = 60.0  # "well under a minute"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def floor_gunzip(path: Path) -> int:
    with gzip.open(path, "rb") as f:
        return len(f.read())


def floor_csv(path: Path) -> int:
    columns = [*UCI_COLUMNS, "Description"]
    t = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False),
                      convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                          strings_can_be_null=True, null_values=[""]))
    return t.num_rows


async def import_twice(redis_url: str, root: str, path: Path) -> tuple[dict, dict]:
    settings = RecommenderSettings(redis_url=redis_url, admin_token="bench-admin-token-0123456789",
                                   token_secret="bench-token-secret-0123456789abcdef", history_dir=root)
    r = aioredis.Redis.from_url(redis_url)
    try:
        use_case = HistoryImport(CustomerRepository(r, settings), r, root,
                                 hot_per_customer=settings.history_hot_per_customer, clock=SystemClock())
        out = []
        for _ in range(2):
            marks: dict[str, float] = {}
            t0 = time.perf_counter()

            def progress(stage: str, done: int, total: int) -> None:
                marks[stage] = time.perf_counter() - t0  # the last call of each stage: when it ended

            report = await use_case.run(path, progress=progress)
            out.append({"seconds": time.perf_counter() - t0, "report": report.as_dict(),
                        "stage_ends_s": {k: round(v, 3) for k, v in marks.items()}})
        return out[0], out[1]
    finally:
        await r.aclose()


def one_round(path: Path, redis_url: str) -> dict:
    res: dict = {}
    t = time.perf_counter()
    floor_gunzip(path)
    res["floor_gunzip"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = floor_csv(path)
    res["floor_csv"] = time.perf_counter() - t
    t = time.perf_counter()
    _, parsed = read_history(path, received_at=time.time())
    res["parse"] = time.perf_counter() - t
    assert parsed.rows_read == rows
    with tempfile.TemporaryDirectory(prefix="vicino-bench-history-") as tmp:
        first, again = asyncio.run(import_twice(redis_url, tmp, path))
        res["import"], res["reimport"] = first["seconds"], again["seconds"]
        res["_import"], res["_reimport"] = first, again
        t = time.perf_counter()
        back = read_interactions(tmp)
        res["read_back"] = time.perf_counter() - t
        res["_read_back_rows"] = back.num_rows
    res["_rows"] = rows
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round instead of three")
    ap.add_argument("--data", type=Path, default=DATA, help="the Online Retail CSV (.gz)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else 3
    info = machine_info()
    info["versions"]["pyarrow"] = pa.__version__
    print(f"Vicino history import benchmark: {info['cpu_count']} CPUs, Python {info['python']}, {info['date']}")
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vicino-bench-redis-") as tmp, \
            EmbeddedRedis(Path(tmp), persist=False) as server:
        for i in range(rounds):
            log(f"round {i + 1}/{rounds}")
            runs.append(one_round(args.data, server.url))
            client = redis.Redis.from_url(server.url)
            client.flushall()  # every round imports into an empty Redis
            client.close()
    rows = runs[0]["_rows"]
    names = ["floor_gunzip", "floor_csv", "parse", "import", "reimport", "read_back"]
    median = {n: statistics.median(r[n] for r in runs) for n in names}
    last = runs[-1]["_import"]["report"]
    results = {
        "machine": info, "profile": "quick" if args.quick else "full", "rounds": rounds, "data": str(args.data),
        "rows": rows,
        "seconds": {n: [round(r[n], 3) for r in runs] for n in names},
        "median_s": {n: round(v, 3) for n, v in median.items()},
        "rows_per_s": {n: round(rows / v) for n, v in median.items() if n != "read_back"},
        "read_back_rows_per_s": round(runs[-1]["_read_back_rows"] / median["read_back"]),
        "import_vs_floor_csv": round(median["import"] / median["floor_csv"], 1),
        "parse_vs_floor_csv": round(median["parse"] / median["floor_csv"], 1),
        "import_report": last,
        "import_stage_ends_s": runs[-1]["_import"]["stage_ends_s"],
        "reimport_hot_history": runs[-1]["_reimport"]["report"]["hot_history"],
        "target": {"value": round(median["import"], 1), "target": f"< {T_IMPORT_S:g} s",
                   "pass": median["import"] < T_IMPORT_S},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    what = {"floor_gunzip": "gunzip alone (floor)", "floor_csv": "pyarrow.csv read alone (floor)",
            "parse": "read_history (parse, map, filter)", "import": "full import (+ Parquet + hot history)",
            "reimport": "re-import (idempotent)", "read_back": "read_interactions (whole log)"}
    lines = []
    for n in names:
        n_rows = runs[-1]["_read_back_rows"] if n == "read_back" else rows
        lines.append([what[n], f"{median[n]:.2f}", f"{n_rows / median[n]:,.0f}",
                      f"{median[n] / median['floor_csv']:.1f}x", " ".join(f"{r[n]:.2f}" for r in runs)])
    print()
    print(table(f"Online Retail, {rows:,} rows (median of {rounds})",
                ["step", "seconds", "rows/s", "vs csv floor", "rounds"], lines))
    print()
    dropped = ", ".join(f"{k} {v:,}" for k, v in last["dropped"].items() if v)
    print(f"imported {last['imported']:,} rows of {last['customers']:,} customers into {last['partitions']} partitions; "
          f"dropped: {dropped}; malformed {last['malformed']}; hot history {last['hot_history']}")
    print(f"stage ends (s after start, last round): {results['import_stage_ends_s']}")
    print(f"target: full import {median['import']:.1f} s {results['target']['target']}: {pf(results['target']['pass'])}")
    print(f"JSON: {args.out}  (elapsed {results['elapsed_s']:.0f} s)")
    return 0 if results["target"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
