"""`python -m loadtests.run`: the whole stack on loopback ports, locust against it, a report.

1. starts the FCM-like provider stand-in of the push tests (`testbed/push_servers/fcm_like.py`) in
   its own process, with a freshly generated service-account key it trusts;
2. starts the stack as `vicino up` does (`vicino.services.launcher.up.Stack`: embedded Redis, every
   service a process, demo stores, offers, history and a trained model) on free ports, with
   the push gateway sending to that sink, no quiet hours, everything under a temporary data dir;
3. runs locust headless (`loadtests/locustfile.py`) for `--duration` seconds, while sampling the
   CPU and memory of every process;
4. stops everything (also on Ctrl-C, errors and a hard timeout) and checks that no process is
   left; writes `<out>/<UTC timestamp>/` (locust CSV and HTML, `summary.json`, the services'
   logs) and prints a summary. Exit code 1 when a request failed, a service died or a process
   was left behind."""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import redis

from vicino.services.launcher.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
DEFAULT_USERS = 1000
SERVICE_NAMES = ("geo", "recommender", "recommender-worker", "push", "scheduler")


class HardTimeout(Exception):
    pass


class Interrupted(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    p.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"peak users (default {DEFAULT_USERS})")
    p.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default users/25, at least 5)")
    p.add_argument("--shape", choices=("steady", "ramp", "spike"), default="steady")
    p.add_argument("--out", default=str(ROOT / "loadtests" / "reports"), help="where the report directory goes")
    p.add_argument("--seed", type=int, default=354)
    p.add_argument("--pace", type=float, default=2.0, help="a phone's seconds between two requests (default 2)")
    p.add_argument("--memory-every", type=float, default=0.0,
                   help="also sample memory every N s and report its growth, first vs last minute (the soak)")
    p.add_argument("--hard-timeout", type=int, default=None,
                   help="seconds after which everything is stopped whatever happens (default duration + 480)")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data dir (Redis, logs, models)")
    p.add_argument("--failover-at", type=float, default=None, metavar="S",
                   help="run on a 3-master, 3-replica Redis Cluster and SIGKILL the master VICINO_REDIS_URL names "
                        "S seconds into the load; reports pushes lost and doubled and the seconds without service")
    a = p.parse_args(argv)
    if a.duration < 5 or a.duration > 6 * 3600:
        p.error("--duration must be between 5 s and 6 h")
    if a.users < 1:
        p.error("--users must be at least 1")
    a.spawn_rate = a.spawn_rate or max(5.0, round(a.users / 25, 1))
    a.hard_timeout = a.hard_timeout or a.duration + 480
    return a




def wait_http(url: str, proc: subprocess.Popen | None, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} at start")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url} after {timeout_s} s")


# --- sampling ---------------------------------------------------------------------------------------

class Sampler(threading.Thread):
    """CPU% and RSS of each process every second; with `memory_every`, a memory timeline with Redis's
    used_memory too."""

    def __init__(self, procs: dict[str, int], redis_url: str | None, memory_every: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.procs = {}
        for name, pid in procs.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
        self.redis_url = redis_url
        self.memory_every = memory_every
        self.cpu: dict[str, list[float]] = {n: [] for n in self.procs}
        self.rss: dict[str, list[int]] = {n: [] for n in self.procs}
        self.timeline: list[dict] = []
        self.machine_cpu: list[float] = []
        self.machine_steal: list[float] = []   # CPU time the hypervisor gave to someone else
        self.died: dict[str, float] = {}
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        for p in self.procs.values():
            try:
                p.cpu_percent(None)
            except psutil.Error:
                pass
        psutil.cpu_percent(None)
        psutil.cpu_times_percent(None)
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2) if self.redis_url else None
        next_mem = self.t0
        while not self._halt.wait(1.0):
            now = time.monotonic()
            for name, p in self.procs.items():
                try:
                    with p.oneshot():
                        self.cpu[name].append(p.cpu_percent(None))
                        self.rss[name].append(p.memory_info().rss)
                except psutil.Error:
                    self.died.setdefault(name, round(now - self.t0, 1))
            self.machine_cpu.append(psutil.cpu_percent(None))
            times = psutil.cpu_times_percent(None)
            self.machine_steal.append(getattr(times, "steal", 0.0))
            if self.memory_every and now >= next_mem:
                next_mem += self.memory_every
                point = {"t": round(now - self.t0, 1),
                         "rss": {n: v[-1] for n, v in self.rss.items() if v}}
                if client is not None:
                    try:
                        point["redis_used_memory"] = client.info("memory")["used_memory"]
                    except redis.RedisError:
                        point["redis_used_memory"] = None
                self.timeline.append(point)
        if client is not None:
            client.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def per_process(self) -> dict:
        out = {}
        for name in self.procs:
            cpu, rss = self.cpu[name], self.rss[name]
            out[name] = {"pid": self.procs[name].pid,
                         "cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
                         "cpu_percent_max": round(max(cpu), 1) if cpu else None,
                         "rss_mb_mean": round(sum(rss) / len(rss) / 2**20, 1) if rss else None,
                         "rss_mb_max": round(max(rss) / 2**20, 1) if rss else None}
        return out

    def growth(self) -> dict | None:
        """First minute against last minute of the timeline: RSS per process and Redis used_memory."""
        if not self.timeline:
            return None
        end = self.timeline[-1]["t"]
        first = [p for p in self.timeline if p["t"] < 60]
        last = [p for p in self.timeline if p["t"] >= end - 60]

        def mean(points, get):
            vals = [v for v in (get(p) for p in points) if v is not None]
            return sum(vals) / len(vals) if vals else None

        def entry(get) -> dict:
            a, b = mean(first, get), mean(last, get)
            if a is None or b is None:
                return {"first_minute_mb": None, "last_minute_mb": None, "growth_mb": None, "growth_percent": None}
            return {"first_minute_mb": round(a / 2**20, 1), "last_minute_mb": round(b / 2**20, 1),
                    "growth_mb": round((b - a) / 2**20, 1), "growth_percent": round(100 * (b - a) / a, 1) if a else None}

        out = {name: entry(lambda p, n=name: p["rss"].get(n)) for name in self.procs}
        out["redis_used_memory"] = entry(lambda p: p.get("redis_used_memory"))
        out["samples"] = len(self.timeline)
        out["span_s"] = end
        return out


# --- locust's CSV -----------------------------------------------------------------------------------

def _num(v: str):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else round(f, 2)


def read_stats(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    rows = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({"type": row["Type"], "name": row["Name"], "count": _num(row["Request Count"]),
                         "failures": _num(row["Failure Count"]), "avg_ms": _num(row["Average Response Time"]),
                         "max_ms": _num(row["Max Response Time"]), "rps": _num(row["Requests/s"]),
                         "p50_ms": _num(row["50%"]), "p95_ms": _num(row["95%"]), "p99_ms": _num(row["99%"])})
    return rows


def read_failures(csv_path: Path, limit: int = 20) -> list[dict]:
    if not csv_path.exists():
        return []
    with open(csv_path, newline="") as f:
        return [{"method": r.get("Method"), "name": r.get("Name"), "error": r.get("Error"),
                 "occurrences": _num(r.get("Occurrences"))} for _, r in zip(range(limit), csv.DictReader(f))]


def server_latency(metrics_text: str) -> dict:
    """Per route, from a service's own `vicino_http_request_duration_seconds` histogram: the count
    and the bucket bound under which 50/95/99% of the requests were served (the server's view,
    without the client's queueing; coarse: the buckets are 0.5, 1, 2.5, 5, 10, 25, 50, 100... ms)."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "vicino_http_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = f"{sample.labels['method']} {sample.labels['route']}"
                buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    out = {}
    for key, bs in buckets.items():
        bs.sort()
        total = bs[-1][1]
        if not total or key.endswith(("/metrics", "/readyz", "/healthz")):
            continue

        def bound(q: float) -> float | None:
            for le, n in bs:
                if n >= q * total:
                    return None if math.isinf(le) else le * 1000
            return None

        out[key] = {"count": int(total), "p50_le_ms": bound(0.5), "p95_le_ms": bound(0.95), "p99_le_ms": bound(0.99)}
    return out


# --- the run ----------------------------------------------------------------------------------------

class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.report = Path(args.out).resolve() / self.stamp
        self.tmp = Path(tempfile.mkdtemp(prefix="vicino-loadtest-"))
        self.sink: subprocess.Popen | None = None
        self.sink_url: str | None = None
        self.stack = None
        self.locust: subprocess.Popen | None = None
        self.sampler: Sampler | None = None
        self.pids: dict[str, int] = {}
        self.errors: list[str] = []
        self.info: dict = {}
        self.failover = None  # loadtests.failover.Failover with --failover-at

    # -- start --
    def start_sink(self) -> None:
        from testbed.push_servers.keys import make_service_account

        for _attempt in range(3):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            sa = make_service_account(self.tmp / "keys", f"{url}/token", project_id="vicino-loadtest")
            log = open(self.tmp / "sink.log", "ab")
            self.sink = subprocess.Popen(
                [sys.executable, "-m", "testbed.push_servers.fcm_like", "--port", str(port), "--project-id",
                 "vicino-loadtest", "--service-account", str(sa.path), "--max-records", "200000"],
                cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
            log.close()
            self.pids["sink"] = self.sink.pid
            try:
                wait_http(f"{url}/_control/stats", self.sink, 30, "the FCM-like sink")
            except RuntimeError:
                if self.sink.poll() is None:
                    raise
                continue  # the port was taken between our probe and its bind: another one
            self.sink_url, self.sa_path = url, sa.path
            return
        raise RuntimeError(f"the FCM-like sink did not start; see {self.tmp / 'sink.log'}")

    def start_stack(self) -> None:
        from vicino.services.launcher.settings import LauncherSettings
        from vicino.services.launcher.up import SERVICES, Stack

        for var in ("VICINO_REDIS_URL", "VICINO_HISTORY_DIR", "VICINO_MODEL_DIR", "VICINO_WEBHOOK_URL",
                    "VICINO_WEBHOOK_SECRET", "VICINO_APNS_KEY_FILE", "VICINO_APNS_KEY_ID", "VICINO_APNS_TEAM_ID",
                    "VICINO_APNS_TOPIC"):
            os.environ.pop(var, None)
        data_dir = self.tmp / "data"
        os.environ.update({
            "VICINO_DATA_DIR": str(data_dir),
            "VICINO_FCM_CREDENTIALS": str(self.sa_path),
            "VICINO_FCM_ENDPOINT": self.sink_url,
            "VICINO_QUIET_HOURS": "",          # the run may be at night
            "VICINO_LOG_LEVEL": os.environ.get("VICINO_LOADTEST_LOG_LEVEL", "WARNING"),
            # a nightly retraining must not land inside a measurement
            "VICINO_JOB_SCHEDULES": json.dumps({"retrain": "off"}),
        })
        redis_url = None
        if self.args.failover_at is not None:
            from loadtests.failover import Failover

            self.failover = Failover(self.tmp / "cluster", self.args.failover_at)
            redis_url = self.failover.start()
            self.pids.update(self.failover.pids())
            # a decision and a push's sending mark wait for a replica: the failover loses no push
            os.environ["VICINO_REDIS_WAIT_REPLICAS"] = "1"
        from testbed.processes import port_block  # (ROOT is on sys.path by now: see main)

        settings = LauncherSettings(host="127.0.0.1", port=port_block(len(SERVICES)), data_dir=data_dir, demo=True,
                                    redis_url=redis_url, admin_token=secrets.token_urlsafe(24),
                                    token_secret=secrets.token_urlsafe(32), demo_radius_m=80.0)
        self.stack = Stack(settings)
        t0 = time.monotonic()
        started = self.stack.start()
        for name, proc in self.stack.children.items():
            self.pids[name] = proc.pid
        if self.stack.redis is not None and self.stack.redis.proc is not None:
            self.pids["redis"] = self.stack.redis.proc.pid
        self.admin = started["admin_token"]
        self.redis_url = started["redis_url"]
        demo = started.get("demo") or {}
        rec = demo.get("recommender") or {}
        self.info["stack"] = {"geo": self.stack.url_of("geo"), "recommender": self.stack.url_of("recommender"),
                              "push": self.stack.url_of("push"), "scheduler": self.stack.url_of("scheduler"),
                              "redis": self.redis_url, "sink": self.sink_url,
                              "stores": (demo.get("stores") or {}).get("created"),
                              "offers": (rec.get("offers") or {}).get("created"),
                              "stocked_stores": rec.get("stocked_stores"),
                              "model_published": rec.get("model_published")}
        if rec.get("model_published"):  # the recommender polls CURRENT: wait until it serves the model
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                r = httpx.get(self.stack.url_of("recommender") + "/v1/model",
                              headers={"Authorization": f"Bearer {self.admin}"}, timeout=5)
                if r.status_code == 200 and r.json().get("serving"):
                    self.info["stack"]["model_version"] = r.json()["serving"]
                    break
                time.sleep(0.5)
            else:
                self.errors.append("the recommender did not load the published model within 60 s")
        time.sleep(max(0.0, 6 - (time.monotonic() - t0)))  # the worker's model poll (5 s) too
        self.info["stack"]["start_s"] = round(time.monotonic() - t0, 1)

    def run_locust(self) -> int:
        a = self.args
        self.report.mkdir(parents=True, exist_ok=True)
        extra = self.report / "e2e_and_counters.json"
        env = {**os.environ,
               "VICINO_URL": self.stack.url_of("geo"), "VICINO_RECOMMENDER_URL": self.stack.url_of("recommender"),
               "VICINO_PUSH_URL": self.stack.url_of("push"), "VICINO_ADMIN_TOKEN": self.admin,
               "VICINO_LOADTEST_SINK_URL": self.sink_url, "VICINO_LOADTEST_SEED": str(a.seed),
               "VICINO_LOADTEST_PACE_S": str(a.pace), "VICINO_LOADTEST_EXTRA": str(extra),
               "VICINO_LOAD_SHAPE": a.shape, "VICINO_LOAD_USERS": str(a.users),
               "VICINO_LOAD_SPAWN_RATE": str(a.spawn_rate), "VICINO_LOAD_DURATION": str(a.duration)}
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", env["VICINO_URL"],
               "-u", str(a.users), "-r", str(a.spawn_rate), "-t", f"{a.duration}s", "--stop-timeout", "5",
               "--csv", str(self.report / "locust"), "--csv-full-history", "--html", str(self.report / "locust.html"), "--only-summary"]
        self.redis_before = self._redis_counters(start=True)
        log = open(self.report / "locust.log", "wb")
        self.locust = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.pids["locust"] = self.locust.pid
        self.sampler = Sampler({n: pid for n, pid in self.pids.items()}, self.redis_url, a.memory_every)
        self.sampler.start()
        if self.failover is not None:
            self.failover.arm({name: self.stack.url_of(name) for name in SERVICE_NAMES})
        try:
            rc = self.locust.wait(a.duration + 90)   # the run, the drain, the report; bounded
        except subprocess.TimeoutExpired:
            self.errors.append(f"locust still running {a.duration + 90} s after its start: stopped")
            self._stop_proc(self.locust, "locust")
            rc = -1
        finally:
            self.sampler.stop()
        for name in SERVICE_NAMES:
            proc = self.stack.children.get(name)
            if proc is not None and proc.poll() is not None:
                self.errors.append(f"{name} exited with code {proc.returncode} during the run")
        return rc

    def _redis_counters(self, start: bool = False) -> dict:
        """Commands processed so far; at the start, Redis's latency monitor is switched on (events
        of 5 ms and more: slow commands, fork, AOF fsync) to tell its stalls from the services'."""
        if self.failover is not None:
            return {}  # a cluster whose named node dies: no single Redis to read counters from
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            if start:
                client.config_set("latency-monitor-threshold", 5)
                client.execute_command("LATENCY", "RESET")
            stats = client.info("stats")
            client.close()
            return {"commands": stats.get("total_commands_processed"), "t": time.monotonic()}
        except redis.RedisError as e:
            self.errors.append(f"Redis: {e}")
            return {}

    def collect(self) -> None:
        if self.failover is not None:
            self.failover.join()
            self.info["failover"] = {**self.failover.report, **self.failover.reconcile(self.sink_url)}
        after = self._redis_counters()
        before = getattr(self, "redis_before", {})
        try:
            if self.failover is not None:
                raise _NoSingleRedis()
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            if before.get("commands") is not None and after.get("commands") is not None:
                self.info["redis_commands_per_s"] = round((after["commands"] - before["commands"])
                                                          / max(1e-9, after["t"] - before["t"]), 1)
            self.info["redis_latency_events"] = [
                {"event": (e[0].decode() if isinstance(e[0], bytes) else e[0]), "latest_ms": e[2], "max_ms": e[3]}
                for e in client.execute_command("LATENCY", "LATEST")]
            mem = client.info("memory")
            self.info["redis"] = {k: mem.get(k) for k in ("used_memory", "used_memory_human", "used_memory_peak",
                                                         "used_memory_peak_human", "used_memory_rss",
                                                         "used_memory_dataset", "mem_fragmentation_ratio")}
            self.info["redis"]["keys"] = client.dbsize()
            client.close()
        except _NoSingleRedis:
            self.info["redis"] = "a cluster: not sampled"
        except redis.RedisError as e:
            self.errors.append(f"Redis INFO memory: {e}")
        self.info["server_side"] = {}
        for service in ("geo", "recommender", "push"):
            try:
                text = httpx.get(self.stack.url_of(service) + "/metrics", timeout=5).text
                self.info["server_side"][service] = server_latency(text)
            except httpx.HTTPError as e:
                self.errors.append(f"{service} /metrics: {e}")
        try:
            self.info["sink"] = httpx.get(f"{self.sink_url}/_control/stats", timeout=5).json()
        except (httpx.HTTPError, ValueError) as e:
            self.errors.append(f"sink stats: {e}")

    # -- stop --
    @staticmethod
    def _stop_proc(proc: subprocess.Popen | None, name: str, timeout: float = 15) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        self._stop_proc(self.locust, "locust")
        if self.stack is not None:
            for name, proc in self.stack.children.items():  # also when the start was cut short
                self.pids.setdefault(name, proc.pid)
            if self.stack.redis is not None and self.stack.redis.proc is not None:
                self.pids.setdefault("redis", self.stack.redis.proc.pid)
            try:
                self.stack.stop()
            except Exception as e:  # noqa: BLE001 - the rest must still be stopped
                self.errors.append(f"stopping the stack: {e}")
        self._stop_proc(self.sink, "sink")
        if self.failover is not None:
            self.failover.stop()
        self.info["leftover_processes"] = self.leftovers()

    def leftovers(self) -> list[dict]:
        """Every process this run started must be gone; a survivor is killed and reported."""
        time.sleep(0.2)
        left = []
        for name, pid in self.pids.items():
            try:
                p = psutil.Process(pid)
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(p.cmdline())[:200]
            except psutil.NoSuchProcess:
                continue
            left.append({"name": name, "pid": pid, "cmdline": cmd})
            try:
                p.kill()
                p.wait(5)
            except psutil.Error:
                pass
        if left:
            self.errors.append(f"processes left after the stop (killed): {left}")
        return left

    def save_logs(self) -> None:
        """The services' logs (JSON lines, WARNING and up) and the sink's, beside the report."""
        dest = self.report / "stack-logs"
        logs = self.tmp / "data" / "logs"
        if logs.exists():
            shutil.copytree(logs, dest, dirs_exist_ok=True)
        redis_log = self.tmp / "data" / "redis" / "redis.log"
        if redis_log.exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(redis_log, dest / "redis.log")
        if (self.tmp / "sink.log").exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.tmp / "sink.log", dest / "sink.log")

    # -- report --
    def summary(self, locust_rc: int | None) -> dict:
        a = self.args
        rows = read_stats(self.report / "locust_stats.csv")
        extra_path = self.report / "e2e_and_counters.json"
        extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
        e2e_raw = extra.pop("e2e_ms", None)
        endpoints = {f"{r['type']} {r['name']}": {k: v for k, v in r.items() if k not in ("type", "name")}
                     for r in rows if r["name"] != "Aggregated" and r["type"] != "E2E"}
        e2e_row = next((r for r in rows if r["type"] == "E2E"), None)
        elapsed = None
        if extra.get("started_at") and extra.get("stopped_at"):
            elapsed = extra["stopped_at"] - extra["started_at"]
        elapsed = elapsed or a.duration
        requests_ = sum(e["count"] or 0 for e in endpoints.values())
        failures = sum(e["failures"] or 0 for e in endpoints.values())
        counters = extra.get("counters", {})
        out = {
            "report": str(self.report), "started_utc": self.stamp,
            "config": {"duration_s": a.duration, "users": a.users, "spawn_rate": a.spawn_rate, "shape": a.shape,
                       "seed": a.seed, "pace_s": a.pace, "memory_every_s": a.memory_every,
                       "cpus": os.cpu_count()},
            "elapsed_s": round(elapsed, 1),
            "requests": requests_, "failures": failures,
            "requests_per_s": round(requests_ / elapsed, 1) if elapsed else None,
            "full_load": extra.get("full_load"),
            "fixes_per_s": round(counters.get("fixes_sent", 0) / elapsed, 1) if elapsed else None,
            "fixes_accepted_per_s": round(counters.get("fixes_accepted", 0) / elapsed, 1) if elapsed else None,
            "endpoints": endpoints,
            "e2e": extra.get("e2e") or ({"count": e2e_row["count"], "p50": e2e_row["p50_ms"], "p95": e2e_row["p95_ms"],
                                         "p99": e2e_row["p99_ms"], "max": e2e_row["max_ms"]} if e2e_row else
                                        {"count": 0}),
            "e2e_from_request_start": extra.get("e2e_from_request_start"),
            "e2e_locust": e2e_row,
            "counters": counters, "phones_by_kind": extra.get("phones_by_kind"),
            "tracks": extra.get("tracks"), "tracks_file": extra.get("tracks_file"),
            "processes": self.sampler.per_process() if self.sampler else {},
            "machine_cpu_percent_mean": (round(sum(self.sampler.machine_cpu) / len(self.sampler.machine_cpu), 1)
                                         if self.sampler and self.sampler.machine_cpu else None),
            "machine_steal_percent_mean": (round(sum(self.sampler.machine_steal) / len(self.sampler.machine_steal), 1)
                                           if self.sampler and self.sampler.machine_steal else None),
            "cpu_timeline_percent": ({"machine": self.sampler.machine_cpu, **self.sampler.cpu}
                                     if self.sampler else None),
            "memory_growth": self.sampler.growth() if self.sampler and a.memory_every else None,
            "memory_timeline": self.sampler.timeline if self.sampler and a.memory_every else None,
            "failures_detail": read_failures(self.report / "locust_failures.csv"),
            "locust_exit_code": locust_rc,
            **self.info,
            "errors": self.errors,
        }
        if e2e_raw is not None:
            (self.report / "e2e_ms.json").write_text(json.dumps(e2e_raw))
        fo = self.info.get("failover")
        if fo is not None:
            # requests refused while the cluster fails over are expected and reported; what must
            # hold is that no push was lost or doubled and that every service came back
            fo["requests_failed"] = failures
            out["ok"] = (fo.get("killed") is True and not fo.get("not_ready") and not fo.get("error")
                         and fo.get("lost") == 0 and fo.get("doubled") == 0 and fo.get("dead_letters") == 0
                         and not self.errors)
        else:
            out["ok"] = (failures == 0 and locust_rc == 0 and not self.errors)
        return out


class _NoSingleRedis(Exception):
    """The failover run's Redis is a cluster whose named node is dead: no INFO to read."""


def _fmt(v, unit: str = "") -> str:
    return "-" if v is None else f"{v}{unit}"


def print_summary(s: dict) -> None:
    c = s["config"]
    print(f"\nVicino load test: {c['shape']}, {s['elapsed_s']} s, {c['users']} users "
          f"(spawn {c['spawn_rate']}/s, phone pace {c['pace_s']} s), {c['cpus']} CPUs")
    if s.get("tracks_file"):
        print(f"  trajectories: {s['tracks']} Go!Track trips from {s['tracks_file']}")
    print(f"  fixes/s {_fmt(s['fixes_per_s'])}   requests/s {_fmt(s['requests_per_s'])}   "
          f"requests {s['requests']}   failures {s['failures']}")
    fl = s.get("full_load")
    if fl:
        print(f"  at full load (all users running, from {fl['since_s']} s, {fl['span_s']} s): "
              f"fixes/s {fl['fixes_per_s']}   requests/s {fl['requests_per_s']}")
    print(f"  {'endpoint':<44} {'count':>7} {'fail':>5} {'req/s':>7} {'p50':>6} {'p95':>6} {'p99':>6}  ms")
    for name, e in sorted(s["endpoints"].items(), key=lambda kv: -(kv[1]["count"] or 0)):
        print(f"  {name:<44} {_fmt(e['count']):>7} {_fmt(e['failures']):>5} {_fmt(e['rps']):>7} "
              f"{_fmt(e['p50_ms']):>6} {_fmt(e['p95_ms']):>6} {_fmt(e['p99_ms']):>6}")
    fo = s.get("failover")
    if fo:
        print(f"  failover: master :{fo.get('victim_port')} killed {fo.get('at_s')} s into the load; replica "
              f"promoted after {_fmt(fo.get('promoted_after_s'), ' s')}; ready again after the promotion: "
              f"{fo.get('ready_after_promotion_s')}; not ready: {fo.get('not_ready') or 'none'}; "
              f"seconds without service {_fmt(fo.get('seconds_without_service'))}")
        print(f"  pushes: {fo.get('push_jobs')} push jobs, {fo.get('pushed')} at the provider, ended otherwise on "
              f"record {fo.get('ended_otherwise')}, lost "
              f"{fo.get('lost')}, doubled {fo.get('doubled')}, dead letters {fo.get('dead_letters')}; requests failed "
              f"{fo.get('requests_failed')}")
    e = s["e2e"]
    k = s.get("counters") or {}
    print(f"  E2E fix→push: {e.get('count', 0)} pushes matched, p50 {_fmt(e.get('p50'))} ms, p95 "
          f"{_fmt(e.get('p95'))} ms, p99 {_fmt(e.get('p99'))} ms, max {_fmt(e.get('max'))} ms "
          f"(visit events: {k.get('enter', 0)} enter, {k.get('dwell', 0)} dwell, {k.get('exit', 0)} exit; "
          f"pushes at the sink {k.get('pushes', 0)}, twice {k.get('pushes_twice', 0)}, "
          f"opens {k.get('opens_sent', 0)})")
    u = s.get("e2e_from_request_start") or {}
    if u.get("count"):
        print(f"    from the request's start instead of its answer (an upper bound): p50 {_fmt(u.get('p50'))} ms, "
              f"p99 {_fmt(u.get('p99'))} ms; pushes ahead of the client's reading of the answer: "
              f"{k.get('negative_e2e', 0)} (counted as 0 ms)")
    server = s.get("server_side") or {}
    if server:
        print("  server side (each service's own latency histogram: bucket bounds, ms):")
        for service, routes in server.items():
            for route, v in sorted(routes.items(), key=lambda kv: -kv[1]["count"])[:4]:
                print(f"    {service:<12} {route:<40} {v['count']:>7}  p50 ≤ {_fmt(v['p50_le_ms'])}  "
                      f"p95 ≤ {_fmt(v['p95_le_ms'])}  p99 ≤ {_fmt(v['p99_le_ms'])}")
    print(f"  {'process':<20} {'cpu% mean':>10} {'cpu% max':>9} {'rss MB mean':>12} {'rss MB max':>11}")
    for name, p in s["processes"].items():
        print(f"  {name:<20} {_fmt(p['cpu_percent_mean']):>10} {_fmt(p['cpu_percent_max']):>9} "
              f"{_fmt(p['rss_mb_mean']):>12} {_fmt(p['rss_mb_max']):>11}")
    print(f"  machine CPU mean {_fmt(s.get('machine_cpu_percent_mean'))}% of {c['cpus']} cores "
          f"(steal {_fmt(s.get('machine_steal_percent_mean'))}%); per process: % of one core")
    r = s.get("redis") or {}
    if isinstance(r, str):  # a failover run's cluster: no single Redis to read
        r = {"used_memory_human": r}
    print(f"  Redis used_memory {r.get('used_memory_human', '-')} (peak {r.get('used_memory_peak_human', '-')}), "
          f"{_fmt(r.get('keys'))} keys, {_fmt(s.get('redis_commands_per_s'))} commands/s; latency events ≥ 5 ms: "
          + (", ".join(f"{e['event']} max {e['max_ms']} ms" for e in s.get("redis_latency_events") or []) or "none"))
    g = s.get("memory_growth")
    if g:
        print(f"  memory growth, first vs last minute ({g['samples']} samples over {g['span_s']} s):")
        for name, v in g.items():
            if isinstance(v, dict):
                print(f"    {name:<20} {_fmt(v['first_minute_mb'])} → {_fmt(v['last_minute_mb'])} MB "
                      f"({_fmt(v['growth_mb'])} MB, {_fmt(v['growth_percent'])}%)")
    for err in s["errors"]:
        print(f"  ERROR: {err}")
    for f in s.get("failures_detail") or []:
        print(f"  failed: {f['method']} {f['name']} ×{f['occurrences']}: {str(f['error'])[:160]}")
    print(f"  report: {s['report']}  ({'OK' if s['ok'] else 'FAILED'})\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    run = Run(args)

    def _interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    def _timeout(signum, frame):
        raise HardTimeout(f"hard timeout of {args.hard_timeout} s")

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    old = {s: signal.getsignal(s) for s in handled}
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: it may be inherited ignored
        signal.signal(s, _interrupt)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.hard_timeout)
    locust_rc = None
    try:
        print(f"loadtests: starting the sink and the stack (data in {run.tmp})...", flush=True)
        run.start_sink()
        run.start_stack()
        print(f"loadtests: stack ready in {run.info['stack']['start_s']} s at {run.info['stack']['geo']}; "
              f"locust {args.shape}, {args.users} users, {args.duration} s...", flush=True)
        locust_rc = run.run_locust()
        run.collect()
    except (KeyboardInterrupt, Interrupted, HardTimeout) as e:
        run.errors.append(f"stopped early: {type(e).__name__} {e}")
    except Exception as e:  # noqa: BLE001 - reported, then everything is stopped
        run.errors.append(f"{type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut the cleanup
            signal.signal(s, signal.SIG_IGN)
        try:
            run.stop()
            run.report.mkdir(parents=True, exist_ok=True)
            run.save_logs()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    summary = run.summary(locust_rc)
    (run.report / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    if not args.keep_data:
        shutil.rmtree(run.tmp, ignore_errors=True)
    else:
        print(f"loadtests: data kept in {run.tmp}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
