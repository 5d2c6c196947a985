"""Benchmark of the push gateway: `python -m bench.push` (part of `make bench`).

What is measured, on the local provider stand-ins of `testbed/push_servers` (FCM HTTP v1 over
HTTP/1.1, APNs over HTTP/2 + TLS), each in its own process, with an embedded Redis:

1. fcm        N push jobs for Android devices (distinct customers and visits) queued at once on
              the 16 customer-shard streams, one gateway worker process (`vicino serve push`,
              default settings): deliveries per second from the first enqueue to the last `sent`
              receipt, the steady rate (10th to 90th percentile of the provider requests, by the
              stand-in's `received_at`), p50/p99 from the job's `created_at` to the stand-in's
              `received_at`, failures (any job not `sent`) and duplicates (a visit sent twice).
2. apns       the same for iOS devices over HTTP/2 + TLS, plus the TLS connections the stand-in
              accepted and the most streams open at once (multiplexing), from `/_control/stats`.
3. floor      the peer every gateway figure is divided by, measured in the same run: a bare
              `httpx.AsyncClient` in its own process sending the same number of equivalent
              requests (same bodies and headers, built in advance) to the same stand-in with the
              gateway's concurrency (128 in flight; HTTP/2 for APNs), no Redis, no gateway. Its
              latency is counted from the start of the burst (every request "queued at once").
              For FCM also a peer: the same client with its 128 connections split over 32 small
              pools used in turn (httpcore's pool costs per request grow with its connections and
              the requests queued on it, so one pool of 128 is a slow floor over HTTP/1.1).
4. x2         the FCM and APNs runs again with two gateway worker processes (--no-two-workers
              skips them).

The shared, noisy 2-core machine runs the stand-in, Redis, the gateway and the driver at once,
so every rate is reported as a ratio of the floor of the same run; the absolute target of the
issue (>= 2,000 deliveries/s) is printed beside it. CPU seconds of each process per 1,000
deliveries show where the cores went. `--profile DIR` samples the first gateway worker with
py-spy (if on PATH or beside the interpreter; else cProfile) and prints its top costs.

Benchmark shortcut: the device registrations and marketing consents the geo service would
publish (`customer_state.device_registration_key`, `consent_key`) are written directly into
Redis, and the jobs are XADDed as the recommender's decision script writes them
(`PushJobV1.to_stream_fields()` on `push_jobs_stream_key(customer_shard(customer_id, 16))`).

Tables on stdout, numbers in bench/results/push.json. Every loop is bounded in count and time,
all traffic stays on 127.0.0.1, every process started here is stopped in a finally block.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import redis

from bench.geo import log, machine_info, table
from vicino.services.kernel.contracts import customer_state
from vicino.services.kernel.contracts.deliveries import dead_jobs_stream_key, receipts_stream_key
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1, idempotency_key, push_jobs_stream_key
from vicino.services.launcher.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "push.json"
ADMIN = "bench-admin-token-0123456789abcdef"
SECRET = "bench-token-secret-0123456789abcdef"
TOPIC = "com.vicino.app"
SHARDS = 16                      # customer shards = event shards = the gateway's defaults
GROUP = "push-gateway"
CONCURRENCY = 128                # the gateway's default `concurrency` and `provider_concurrency`
TARGET_PER_S = 2000.0            # the target, deliveries per second
WARMUP = 300                     # jobs (or floor requests) before each measured burst
HARD_LIMIT_S = 300               # the whole run, whatever happens
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class _Overrun(BaseException):
    """Raised by the hard time limit; not an Exception, so nothing swallows it."""


def _proc_cpu_s(pid: int | None) -> float:
    """user + system CPU seconds of a process, from /proc (0 if unreadable)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def steady_rate(times: list[float]) -> float | None:
    """Requests per second between the 10th and the 90th percentile of their arrival times."""
    if len(times) < 20:
        return None
    s = sorted(times)
    lo, hi = round(0.1 * (len(s) - 1)), round(0.9 * (len(s) - 1))
    return (hi - lo) / (s[hi] - s[lo]) if s[hi] > s[lo] else None


def _r(x, nd=1):
    return None if x is None else round(x, nd)


# --------------------------------------------------------------------------------------------
# Processes: the stand-ins and the gateway, each a child stopped by pid in a finally block
# --------------------------------------------------------------------------------------------

@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class Procs:
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict, tmp: Path) -> Child:
        log_path = tmp / f"{name}.log"
        out = open(log_path, "wb")
        try:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(sig)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as e:  # keep stopping the others
                log(f"could not stop {child.name} (pid {child.pid}): {e!r}")


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICINO_")
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_ready_line(child: Child, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in child.tail(100_000).splitlines():
            if line.startswith("READY "):
                return line.split(None, 1)[1].strip()
        if child.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not start: {child.tail()}")


def wait_healthz(child: Child, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            break
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not start: {child.tail()}")


class Fake:
    """A stand-in running in its own process, and the driver's client of its `/_control/*`."""

    def __init__(self, kind: str, child: Child, url: str, verify=True) -> None:
        self.kind, self.child, self.url = kind, child, url
        # one control connection for the whole run (never expired), made now: the TLS connections
        # the APNs stand-in counts during a burst are then the sender's alone
        self.http = httpx.Client(base_url=url, timeout=60.0, http2=kind == "apns", verify=verify, trust_env=False,
                                 limits=httpx.Limits(max_connections=1, keepalive_expiry=None))
        self.stats()

    def stats(self) -> dict:
        return self.http.get("/_control/stats").json()

    def reset(self) -> None:
        self.http.post("/_control/reset").raise_for_status()

    def received(self, since: int) -> list[dict]:
        r = self.http.get("/_control/received", params={"since": since})
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self.http.close()


# --------------------------------------------------------------------------------------------
# The workload: recipients, jobs, the burst, the receipts
# --------------------------------------------------------------------------------------------

def provider_token(kind: str, seed: str) -> str:
    from testbed.push_servers import apns_like, fcm_like
    return apns_like.device_token(seed) if kind == "apns" else fcm_like.registration_token(seed)


@dataclass
class Batch:
    phase: str
    platform: str
    customers: list[str]
    jobs: list[tuple[str, dict]]           # (stream, job as JSON-ready dict)

    @property
    def prefix(self) -> str:
        return f"b-{self.phase}-"


def make_batch(r: redis.Redis, phase: str, kind: str, n: int) -> Batch:
    """N jobs for N distinct customers, devices and visits; their registrations and consents
    written where the geo service publishes them."""
    platform = "ios" if kind == "apns" else "android"
    customers, jobs = [], []
    pipe = r.pipeline(transaction=False)
    now = time.time()
    for i in range(n):
        cust, dev, visit = f"b-{phase}-c{i}", f"b-{phase}-d{i}", f"vis_{phase}_{i}"
        token = provider_token(kind, f"{phase}-{i}")
        store = f"store-{i % 97}"
        job = PushJobV1(job_id=f"job_{phase}_{i}", idempotency_key=idempotency_key(cust, store, visit),
                        customer_id=cust, device_id=dev, platform=platform, push_token=token,
                        title="An offer near you", body="2 x 10% off at your store",
                        data=PushDataV1(offer_id=f"offer-{i % 31}", store_id=store, visit_id=visit,
                                        decision_id=f"dec_{phase}_{i}"),
                        collapse_key=visit, created_at=now, expires_at=now + 900)
        customers.append(cust)
        jobs.append((push_jobs_stream_key(customer_shard(cust, SHARDS)), job.model_dump(by_alias=True, mode="json")))
        pipe.hset(customer_state.device_registration_key(dev, SHARDS),
                  mapping={"customer_id": cust, "platform": platform, "push_token": token, "token_id": f"tk{i}",
                           "timezone": "Europe/Rome", "registered_at": repr(now), "location_consent": "1"})
        pipe.hset(customer_state.consent_key(cust),
                  mapping={"location": "1", "marketing": "1", "personalisation": "1", "updated_at": repr(now)})
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
    return Batch(phase, platform, customers, jobs)


def enqueue(r: redis.Redis, batch: Batch, chunk: int = 500) -> dict:
    """XADD every job as fast as one client can (pipelined chunks); `created_at` is the moment
    its chunk is written. Returns the first/last enqueue times and each visit's created_at."""
    created: dict[str, float] = {}
    t_first = time.time()
    for k in range(0, len(batch.jobs), chunk):
        _write_chunk(r, batch.jobs[k:k + chunk], created)
    return {"t_first": t_first, "t_last": time.time(), "created": created}


def _write_chunk(r: redis.Redis, jobs: list[tuple[str, dict]], created: dict[str, float]) -> None:
    """One pipelined XADD per job, all created now (and expiring 900 s later)."""
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for stream, d in jobs:
        d["created_at"], d["expires_at"] = now, now + 900
        created[d["data"]["visit_id"]] = now
        pipe.xadd(stream, {"v": "1", "data": orjson.dumps(d)})
    pipe.execute()


def receipts_len(r: redis.Redis) -> int:
    pipe = r.pipeline(transaction=False)
    for s in range(SHARDS):
        pipe.xlen(receipts_stream_key(s))
    return sum(pipe.execute())


def wait_receipts(r: redis.Redis, target: int, timeout_s: float, stall_s: float = 10.0) -> bool:
    """Until the receipt streams hold `target` entries, nothing moved for `stall_s`, or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last, last_move = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = receipts_len(r)
        if n >= target:
            return True
        if n != last:
            last, last_move = n, time.monotonic()
        elif time.monotonic() - last_move > stall_s:
            return False
        time.sleep(0.05)
    return False


def read_receipts(r: redis.Redis, prefix: str, since_s: float) -> list[dict]:
    out = []
    start = f"{int(since_s * 1000) - 1000}-0"
    for s in range(SHARDS):
        for _, fields in r.xrange(receipts_stream_key(s), min=start):
            d = orjson.loads(fields[b"data"])
            if d["customer_id"].startswith(prefix):
                out.append(d)
    return out


def settle(r: redis.Redis, batch: Batch, since_s: float, timeout_s: float) -> list[dict]:
    """Waits until every job of the batch has a terminal receipt (bounded), returns the receipts."""
    deadline = time.monotonic() + timeout_s
    while True:
        recs = read_receipts(r, batch.prefix, since_s)
        terminal = {d["customer_id"] for d in recs if d["status"] not in ("queued", "opened")}
        if len(terminal) >= len(batch.customers) or time.monotonic() > deadline:
            return recs
        time.sleep(0.25)


def dead_len(r: redis.Redis) -> int:
    pipe = r.pipeline(transaction=False)
    for s in range(SHARDS):
        pipe.xlen(dead_jobs_stream_key(s))
    return sum(pipe.execute())


def pending_total(r: redis.Redis) -> int:
    total = 0
    for s in range(SHARDS):
        try:
            total += r.xpending(push_jobs_stream_key(s), GROUP)["pending"]
        except redis.ResponseError:
            pass
    return total


def visit_of(kind: str, rec: dict) -> str | None:
    doc = rec.get("json")
    if not isinstance(doc, dict):
        return None
    if kind == "fcm":
        return ((doc.get("message") or {}).get("data") or {}).get("visit_id")
    return doc.get("visit_id")


def is_send(kind: str, rec: dict) -> bool:
    return rec["path"].startswith("/3/device/" if kind == "apns" else "/v1/projects/")


# --------------------------------------------------------------------------------------------
# The floor: a bare httpx.AsyncClient in its own process
# --------------------------------------------------------------------------------------------

def _floor_child(cfg: dict, q) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # uvicorn[standard] brings it; the gateway runs on it
        pass
    try:
        q.put(asyncio.run(_floor_run(cfg)))
    except BaseException as e:  # report, don't hang the driver
        q.put({"error": f"{type(e).__name__}: {e}"})


def _floor_requests(cfg: dict, n: int, tag: str, auth: str) -> list[tuple[str, bytes, dict]]:
    from vicino.services.push_gateway.domain.messages import (Notification, apns_headers, apns_payload,
                                                       fcm_message)
    out = []
    now = time.time()
    for i in range(n):
        visit = f"vis_floor{tag}_{i}"
        token = provider_token(cfg["kind"], f"floor{tag}-{i}")
        n_ = Notification(delivery_id=f"dlv{i % SHARDS:03d}{i:024d}", customer_id=f"floor-c{i}",
                          device_id=f"floor-d{i}", platform="ios" if cfg["kind"] == "apns" else "android",
                          token=token, title="An offer near you", body="2 x 10% off at your store",
                          data={"offer_id": f"offer-{i % 31}", "store_id": f"store-{i % 97}", "visit_id": visit,
                                "decision_id": f"dec_floor_{i}", "delivery_id": f"dlv{i % SHARDS:03d}{i:024d}"},
                          collapse_key=visit, expires_at=now + 900)
        if cfg["kind"] == "apns":
            headers = {**apns_headers(n_, TOPIC), "authorization": f"bearer {auth}"}
            out.append((f"{cfg['url']}/3/device/{token}", apns_payload(n_), headers))
        else:
            headers = {"Authorization": f"Bearer {auth}", "Content-Type": "application/json; UTF-8"}
            out.append((cfg["send_url"], orjson.dumps(fcm_message(n_, now)), headers))
    return out


async def _floor_run(cfg: dict) -> dict:
    import ssl

    import jwt
    kind, conc, pools = cfg["kind"], cfg["concurrency"], cfg.get("pools", 1)
    per_pool = -(-conc // pools)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
    verify = ssl.create_default_context(cafile=cfg["ca"]) if kind == "apns" else True
    # connections and stream maxima from here on; on a connection of its own, so that the TLS
    # connections counted are the sender's, as for the gateway (whose stand-in the driver resets)
    async with httpx.AsyncClient(http2=kind == "apns", verify=verify, trust_env=False) as control:
        (await control.post(f"{cfg['url']}/_control/reset")).raise_for_status()
    async with contextlib.AsyncExitStack() as stack:
        # `pools` > 1: that many small connection pools used in turn (httpcore's pool does work per
        # request that grows with its connections and the requests queued on it)
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            http2=kind == "apns", limits=limits, timeout=10.0, verify=verify, trust_env=False)) for _ in range(pools)]
        client = clients[0]
        turn = [0]

        def next_client() -> httpx.AsyncClient:
            turn[0] = (turn[0] + 1) % pools
            return clients[turn[0]]
        now = int(time.time())
        if kind == "fcm":  # an access token, as the gateway gets one
            info = orjson.loads(Path(cfg["service_account"]).read_bytes())
            assertion = jwt.encode({"iss": info["client_email"], "scope": FCM_SCOPE, "aud": info["token_uri"],
                                    "iat": now, "exp": now + 3600}, info["private_key"], algorithm="RS256",
                                   headers={"kid": info["private_key_id"]})
            r = await client.post(info["token_uri"], data={"grant_type": JWT_BEARER, "assertion": assertion})
            r.raise_for_status()
            auth = r.json()["access_token"]
        else:
            auth = jwt.encode({"iss": cfg["team_id"], "iat": now}, Path(cfg["apns_key"]).read_bytes(),
                              algorithm="ES256", headers={"kid": cfg["key_id"]})
        warm = _floor_requests(cfg, cfg["warmup"], "w", auth)
        reqs = _floor_requests(cfg, cfg["n"], "", auth)

        async def burst(items, deadline: float) -> tuple[list, Counter]:
            it = iter(items)
            done: list[float] = []
            statuses: Counter = Counter()

            async def worker():
                for url, body, headers in it:
                    if time.monotonic() > deadline:
                        return
                    try:
                        r = await next_client().post(url, content=body, headers=headers)
                        statuses[r.status_code] += 1
                    except httpx.HTTPError as e:
                        statuses[type(e).__name__] += 1
                    done.append(time.time())
            await asyncio.gather(*(worker() for _ in range(conc)))
            return done, statuses

        await burst(warm, time.monotonic() + 30)
        since = (await client.get(f"{cfg['url']}/_control/stats")).json()["total_received"]
        cpu0 = time.process_time()
        t0 = time.time()
        done, statuses = await burst(reqs, time.monotonic() + cfg["max_s"])
        t_end = max(done) if done else time.time()
        return {"since": since, "t0": t0, "t_last": t_end, "sent": len(done), "statuses": dict(statuses),
                "ok": statuses.get(200, 0), "cpu_s": time.process_time() - cpu0}


def run_floor(fake: Fake, kind: str, n: int, material: dict, max_s: float, concurrency: int = CONCURRENCY,
              pools: int = 1) -> dict:
    cfg = {"kind": kind, "n": n, "concurrency": concurrency, "pools": pools, "warmup": WARMUP, "url": fake.url,
           "max_s": max_s, **material}
    cpu_fake0 = _proc_cpu_s(fake.child.pid)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_floor_child, args=(cfg, q), name=f"floor-{kind}")
    p.start()
    got = None
    try:
        deadline = time.monotonic() + max_s + 90
        while got is None and time.monotonic() < deadline:
            try:
                got = q.get(timeout=0.5)
            except queue.Empty:
                if not p.is_alive() and q.empty():
                    raise RuntimeError(f"floor {kind}: the client process died (exit code {p.exitcode})")
        if got is None:
            raise RuntimeError(f"floor {kind}: no answer within {max_s + 90:.0f} s")
    finally:
        p.join(15)
        if p.is_alive():
            p.terminate()
            p.join(5)
    if "error" in got:
        raise RuntimeError(f"floor {kind}: {got['error']}")
    cpu_fake = _proc_cpu_s(fake.child.pid) - cpu_fake0
    recs = [x for x in fake.received(got["since"]) if is_send(kind, x)]
    stats = fake.stats()
    times = [x["received_at"] for x in recs]
    lat = [(t - got["t0"]) * 1000 for t in times]
    ok = got["ok"]
    elapsed = got["t_last"] - got["t0"]
    out = {"requests": n, "pools": pools, "ok": ok, "failures": n - ok, "statuses": got["statuses"],
           "seconds": _r(elapsed, 3), "per_s": _r(ok / elapsed if elapsed > 0 else None),
           "steady_per_s": _r(steady_rate(times)), "p50_ms": _r(pct(lat, 0.5)), "p99_ms": _r(pct(lat, 0.99)),
           "received": len(recs),
           "cpu_s_per_1000": {"client": _r(got["cpu_s"] * 1000 / max(ok, 1), 3),
                              "stand_in": _r(cpu_fake * 1000 / max(ok, 1), 3)}}
    if kind == "apns":
        out["tls_connections"] = stats.get("connections_accepted")
        out["max_open_streams"] = stats.get("max_open_streams")
        out["connections_seen"] = len({x.get("connection") for x in recs})
    return out


# --------------------------------------------------------------------------------------------
# The gateway runs
# --------------------------------------------------------------------------------------------

def enqueue_paced(r: redis.Redis, batch: Batch, rate: float, chunk: int = 10) -> dict:
    """The jobs at a steady `rate` per second, `chunk` at a time (as decisions arrive in
    production), each with the `created_at` of its own chunk: latency below capacity."""
    created: dict[str, float] = {}
    t_first = time.time()
    for k in range(0, len(batch.jobs), chunk):
        due = t_first + k / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        _write_chunk(r, batch.jobs[k:k + chunk], created)
    return {"t_first": t_first, "t_last": time.time(), "created": created}


@dataclass
class Bench:
    tmp: Path
    procs: Procs
    redis: EmbeddedRedis
    r: redis.Redis
    fakes: dict[str, Fake]
    material: dict
    log_level: str
    extra_env: dict = field(default_factory=dict)
    gateways: list[Child] = field(default_factory=list)

    def gateway_env(self) -> dict:
        m = self.material
        return {**base_env(), "VICINO_REDIS_URL": self.redis.url, "VICINO_ADMIN_TOKEN": ADMIN,
                "VICINO_TOKEN_SECRET": SECRET, "VICINO_LOG_LEVEL": self.log_level,
                "VICINO_GEO_URL": f"http://127.0.0.1:{free_port()}",
                "VICINO_RECOMMENDER_URL": f"http://127.0.0.1:{free_port()}",
                "VICINO_FCM_CREDENTIALS": m["service_account"], "VICINO_FCM_ENDPOINT": self.fakes["fcm"].url,
                "VICINO_APNS_KEY_FILE": m["apns_key"], "VICINO_APNS_KEY_ID": m["key_id"],
                "VICINO_APNS_TEAM_ID": m["team_id"], "VICINO_APNS_TOPIC": TOPIC,
                "VICINO_APNS_ENDPOINT": self.fakes["apns"].url,
                # the gateway's APNs client verifies with httpx's default context, which reads this
                "SSL_CERT_FILE": m["ca"], **self.extra_env}

    def start_gateway(self, profile_dir: Path | None = None) -> Child:
        k = len(self.gateways) + 1
        port = free_port()
        cmd = [sys.executable, "-m", "vicino.services.cli", "serve", "push", "--host", "127.0.0.1", "--port", str(port)]
        if profile_dir is not None and not pyspy_binary():
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile_dir / f"gateway{k}.prof")] + cmd[1:]
        child = self.procs.start(f"gateway{k}", cmd, self.gateway_env(), self.tmp)
        wait_healthz(child, port)
        self.gateways.append(child)
        return child

    def warm(self, kind: str, tag: str) -> None:
        """WARMUP jobs through the gateways: access token, connections, imports, consumer groups."""
        batch = make_batch(self.r, f"w{tag}", kind, WARMUP)
        base = receipts_len(self.r)
        since = time.time()
        enqueue(self.r, batch)
        if not wait_receipts(self.r, base + 2 * WARMUP, 60):
            tails = "\n".join(g.tail(1500) for g in self.gateways)
            raise RuntimeError(f"warm-up {kind}: the gateway did not deliver {WARMUP} jobs; logs:\n{tails}")
        settle(self.r, batch, since, 10)

    def run(self, phase: str, kind: str, n: int, timeout_s: float, profiler=None, rate: float | None = None) -> dict:
        fake = self.fakes[kind]
        batch = make_batch(self.r, phase, kind, n)
        fake.reset()  # connections and stream maxima from the warm-up on
        self.warm(kind, phase)
        since_idx = fake.stats()["total_received"]
        base, dead0 = receipts_len(self.r), dead_len(self.r)
        pids = {"gateway": [g.pid for g in self.gateways], "stand_in": [fake.child.pid],
                "redis": [self.redis.proc.pid]}
        cpu0 = {k: sum(_proc_cpu_s(p) for p in v) for k, v in pids.items()}
        drv0 = time.process_time()
        if profiler:
            profiler.start(phase)
        log(f"{phase}: enqueue {n} jobs ({len(self.gateways)} gateway worker(s))")
        t_since = time.time()
        enq = enqueue(self.r, batch) if rate is None else enqueue_paced(self.r, batch, rate)
        complete = wait_receipts(self.r, base + 2 * n, timeout_s)
        if profiler:
            profiler.stop(phase)
        cpu = {k: sum(_proc_cpu_s(p) for p in v) - cpu0[k] for k, v in pids.items()}
        cpu["driver"] = time.process_time() - drv0
        receipts = settle(self.r, batch, t_since, 5 if complete else 1)
        recs = [x for x in fake.received(since_idx) if is_send(kind, x)]
        stats = fake.stats()

        sent = {d["customer_id"]: d["ts"] for d in receipts if d["status"] == "sent"}
        terminal = Counter(d["status"] for d in receipts if d["status"] not in ("queued", "opened"))
        retried = sum(1 for d in receipts if d["status"] == "queued" and d.get("reason"))
        first_by_visit: dict[str, dict] = {}
        for x in recs:
            v = visit_of(kind, x)
            if v is not None and v not in first_by_visit:
                first_by_visit[v] = x
        lat = [(x["received_at"] - enq["created"][v]) * 1000 for v, x in first_by_visit.items()
               if v in enq["created"]]
        t_last = max(sent.values()) if sent else time.time()
        elapsed = t_last - enq["t_first"]
        n_sent = len(sent)
        out = {"jobs": n, "workers": len(self.gateways), "sent": n_sent, "failures": n - n_sent,
               "terminal_statuses": dict(terminal), "retries_scheduled": retried,
               "dead_lettered": dead_len(self.r) - dead0, "pending_after": pending_total(self.r),
               "enqueue_s": _r(enq["t_last"] - enq["t_first"], 3), "seconds": _r(elapsed, 3),
               "per_s": _r(n_sent / elapsed if elapsed > 0 else None),
               "steady_per_s": _r(steady_rate([x["received_at"] for x in recs])),
               "p50_ms": _r(pct(lat, 0.5)), "p99_ms": _r(pct(lat, 0.99)),
               "provider_requests": len(recs), "provider_non_200": sum(1 for x in recs if x["status"] != 200),
               "duplicates": len(recs) - len(first_by_visit),
               "cpu_s_per_1000": {k: _r(v * 1000 / max(n_sent, 1), 3) for k, v in cpu.items()},
               "cpu_share_of_wall": {k: _r(v / elapsed, 2) if elapsed > 0 else None for k, v in cpu.items()}}
        if kind == "apns":
            out["tls_connections"] = stats.get("connections_accepted")
            out["max_open_streams"] = stats.get("max_open_streams")
            out["connections_seen"] = len({x.get("connection") for x in recs})
        if not complete:
            out["incomplete"] = True
        log(f"{phase}: {out['sent']}/{n} sent in {out['seconds']} s ({out['per_s']}/s)")
        return out


def pyspy_binary() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


class PySpy:
    """Samples one gateway worker during the measured bursts (folded stacks, then top costs)."""

    def __init__(self, pid: int, out_dir: Path, procs: Procs, tmp: Path) -> None:
        self.pid, self.out_dir, self.procs, self.tmp = pid, out_dir, procs, tmp
        self.child: Child | None = None
        self.files: dict[str, Path] = {}

    def start(self, phase: str) -> None:
        path = self.out_dir / f"{phase}.folded"
        self.files[phase] = path
        self.child = self.procs.start(f"py-spy-{phase}", [pyspy_binary(), "record", "--pid", str(self.pid),
                                                          "--rate", "100", "--format", "raw",
                                                          "--output", str(path)], base_env(), self.tmp)
        time.sleep(0.5)  # attached before the burst

    def stop(self, phase: str) -> None:
        if self.child is not None:
            self.procs.stop(self.child, sig=signal.SIGINT, timeout=30)
            self.child = None


def _frame(f: str) -> tuple[str, str]:
    """'func (path/to/file.py:12)' -> ('func', 'pkg/file.py'), site-packages and the repo stripped."""
    fn, _, loc = f.partition(" (")
    path = loc.rsplit(":", 1)[0].split("site-packages/")[-1].replace(str(ROOT) + "/", "")
    return fn, path


def _package(path: str) -> str:
    if path.startswith("services/"):
        return "/".join(path.split("/")[:2])
    if "/" in path and not path.startswith(("<", "/")):
        return path.split("/")[0]
    return path.rsplit("/", 1)[-1]


def summarize_folded(path: Path, top: int = 40) -> dict:
    """py-spy's folded stacks (root first): where the worker's CPU went, by package (the leaf
    frame's) and by function including its callees."""
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [_frame(f) for f in stack.split(";")]
        own[_package(frames[-1][1])] += c
        for fn, file in set(frames):
            incl[f"{fn} ({file})"] += c
    if not total:
        return {"samples": 0, "self_by_package": [], "inclusive": []}
    return {"samples": total,
            "self_by_package": [[k, round(100 * c / total, 1)] for k, c in own.most_common(15)],
            # the frames every sample has (runpy, typer, uvicorn, the loop) say nothing
            "inclusive": [[k, round(100 * c / total, 1)] for k, c in incl.most_common()
                          if c < 0.995 * total][:top]}


# --------------------------------------------------------------------------------------------

def make_material(tmp: Path, fcm_url: str) -> dict:
    from testbed.push_servers import make_apns_key, make_service_account, make_tls
    keys = tmp / "keys"
    sa = make_service_account(keys, f"{fcm_url}/token")
    apns_key = make_apns_key(keys)
    tls = make_tls(keys)
    return {"service_account": str(sa.path), "apns_key": str(apns_key.path),
            "apns_public": str(apns_key.public_key_path),
            "key_id": apns_key.key_id, "team_id": apns_key.team_id, "ca": str(tls.ca_cert), "cert": str(tls.cert),
            "tls_key": str(tls.key), "client_email": sa.client_email, "sa_public": str(sa.public_key_path),
            "private_key_id": sa.private_key_id, "send_url": f"{fcm_url}/v1/projects/{sa.project_id}/messages:send"}


def start_fakes(procs: Procs, tmp: Path) -> tuple[dict[str, Fake], dict]:
    env = base_env()
    fcm_child = procs.start("fcm_like", [sys.executable, "-m", "testbed.push_servers.fcm_like"], env, tmp)
    fcm_url = wait_ready_line(fcm_child)
    material = make_material(tmp, fcm_url)
    fcm = Fake("fcm", fcm_child, fcm_url)
    fcm.http.post("/_control/service_account", json={
        "public_key_pem": Path(material["sa_public"]).read_text(), "client_email": material["client_email"],
        "project_id": "vicino-test", "private_key_id": material["private_key_id"]}).raise_for_status()
    apns_child = procs.start("apns_like", [
        sys.executable, "-m", "testbed.push_servers.apns_like", "--cert", material["cert"], "--key", material["tls_key"],
        "--key-id", material["key_id"], "--team-id", material["team_id"], "--topic", TOPIC,
        "--public-key", material["apns_public"]], env, tmp)
    apns_url = wait_ready_line(apns_child)
    import ssl
    apns = Fake("apns", apns_child, apns_url, verify=ssl.create_default_context(cafile=material["ca"]))
    return {"fcm": fcm, "apns": apns}, material


def code_state() -> dict:
    """Which gateway was measured: the commit, and the files under services/ changed since."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "services_changed": [line[3:] for line in git("status", "--porcelain", "--", "services").splitlines()
                                 if line.strip()]}


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


PACED_RATE = 300.0  # jobs per second in the paced runs: about a third of one worker's capacity


def print_tables(res: dict) -> None:
    floors = res.get("floor", {})
    for kind, label in (("fcm", "FCM HTTP v1 (HTTP/1.1)"), ("apns", "APNs (HTTP/2 + TLS)")):
        fl = floors.get(kind)
        rows = []
        if fl:
            rows.append(["bare httpx client, 1 pool (floor)", f"{fl['per_s']:,.0f}", "1.00",
                         f"{fl['steady_per_s']:,.0f}" if fl["steady_per_s"] else "-", "1.00",
                         fl["p50_ms"], fl["p99_ms"], fl["failures"]])
        senders = [(f"bare httpx, {p['pools']} pools of {-(-res['config']['concurrency'] // p['pools'])} "
                    "connections (peer)", p) for p in [floors.get(f"{kind}_pools")] if p]
        senders += [(f"gateway, {g['workers']} worker{'s' if g['workers'] > 1 else ''}", g)
                    for g in (res.get("gateway", {}).get(k) for k in (kind, f"{kind}_2workers")) if g]
        for name, g in senders:
            rows.append([name,
                         f"{g['per_s']:,.0f}" if g["per_s"] else "-",
                         f"{ratio(g['per_s'], fl and fl['per_s']):.2f}" if fl and g["per_s"] else "-",
                         f"{g['steady_per_s']:,.0f}" if g["steady_per_s"] else "-",
                         f"{ratio(g['steady_per_s'], fl and fl['steady_per_s']):.2f}"
                         if fl and g["steady_per_s"] and fl["steady_per_s"] else "-",
                         g["p50_ms"], g["p99_ms"], g["failures"]])
        if rows:
            n = (fl or res["gateway"].get(kind) or {}).get("requests") or res["gateway"].get(kind, {}).get("jobs")
            print()
            print(table(f"{label}: {n:,} pushes queued at once, {res['config']['concurrency']} in flight "
                        f"(target >= {TARGET_PER_S:,.0f} deliveries/s)",
                        ["sender", "per s", "vs floor", "steady per s", "vs floor", "p50 ms", "p99 ms", "failures"],
                        rows))
    paced = [(k, g) for k, g in res.get("gateway", {}).items() if k.endswith("_paced")]
    if paced:
        print()
        print(table(f"One worker below capacity: jobs enqueued {PACED_RATE:.0f}/s, 10 at a time (latency of one push)",
                    ["run", "jobs", "per s", "p50 ms", "p99 ms", "failures", "gateway CPU s per 1,000"],
                    [[k, g["jobs"], g["per_s"], g["p50_ms"], g["p99_ms"], g["failures"],
                      g["cpu_s_per_1000"]["gateway"]] for k, g in paced]))
    apns_rows = []
    if floors.get("apns"):
        f = floors["apns"]
        apns_rows.append(["bare httpx client (floor)", f["tls_connections"], f["connections_seen"],
                          f["max_open_streams"]])
    for key in ("apns", "apns_2workers"):
        g = res.get("gateway", {}).get(key)
        if g:
            apns_rows.append([f"gateway, {g['workers']} worker{'s' if g['workers'] > 1 else ''}", g["tls_connections"],
                              g["connections_seen"], g["max_open_streams"]])
    if apns_rows:
        print()
        print(table("APNs multiplexing (stand-in's /_control/stats and records)",
                    ["sender", "TLS connections accepted (warm-up + burst)", "connections carrying the burst",
                     "max streams open at once"],
                    apns_rows))
    cpu_rows = []
    for kind in ("fcm", "apns"):
        f = floors.get(kind)
        if f:
            c = f["cpu_s_per_1000"]
            cpu_rows.append([f"{kind} floor", "-", c["stand_in"], "-", c["client"]])
        if floors.get(f"{kind}_pools"):
            c = floors[f"{kind}_pools"]["cpu_s_per_1000"]
            cpu_rows.append([f"{kind} peer (pools)", "-", c["stand_in"], "-", c["client"]])
        for key in (kind, f"{kind}_2workers"):
            g = res.get("gateway", {}).get(key)
            if g:
                c = g["cpu_s_per_1000"]
                cpu_rows.append([f"{key} gateway", c["gateway"], c["stand_in"], c["redis"], c["driver"]])
    if cpu_rows:
        print()
        print(table("CPU seconds per 1,000 deliveries (2 cores shared by all)",
                    ["run", "gateway", "stand-in", "redis", "client/driver"], cpu_rows))
    print("\nNotes: latencies run from the job's created_at (the floor: the burst's start) to the stand-in's "
          "received_at,\nso with every push queued at once they are mostly time spent waiting in the queue. The floor "
          "keeps all\n--concurrency requests in flight; so does a gateway worker (VICINO_CONCURRENCY handlers, at most "
          "100 streams on its APNs connection).")
    g = res.get("gateway", {})
    det = [[k, v["sent"], v["failures"], v["duplicates"], v["retries_scheduled"], v["dead_lettered"],
            v["pending_after"], v["enqueue_s"], v["seconds"],
            f"{100 * v['cpu_share_of_wall']['gateway'] / v['workers']:.0f}%"] for k, v in g.items()]
    if det:
        print()
        print(table("Gateway runs: outcome", ["run", "sent", "not sent", "sent twice", "retries", "dead letters",
                                              "pending after", "enqueue s", "enqueue -> last sent s",
                                              "gateway CPU busy per worker"], det))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=None, help="jobs per run (default 10,000; --quick: 2,000)")
    ap.add_argument("--quick", action="store_true", help="2,000 jobs per run (to try the script)")
    ap.add_argument("--no-two-workers", action="store_true", help="skip the run with two gateway workers")
    ap.add_argument("--log-level", default="INFO", help="the gateway's VICINO_LOG_LEVEL (default: its default, INFO)")
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY,
                    help="requests in flight: the floor's, and the gateway's VICINO_CONCURRENCY and "
                         "VICINO_PROVIDER_CONCURRENCY (default 128, the gateway's defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="VICINO_X=VALUE",
                    help="another setting of the gateway workers (repeatable), for experiments")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="sample the first gateway worker (py-spy, else cProfile) into DIR; results go to DIR too")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    n = args.jobs or (2_000 if args.quick else 10_000)
    if not 1 <= n <= 200_000:
        ap.error("--jobs must be between 1 and 200,000")
    out_path = args.out or ((args.profile / "push.json") if args.profile else RESULTS)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    timeout_s = 20 + n / 250                  # each burst, bounded in time as well as in count
    extra_env = {}
    if args.concurrency != CONCURRENCY:
        extra_env.update(VICINO_CONCURRENCY=str(args.concurrency), VICINO_PROVIDER_CONCURRENCY=str(args.concurrency))
    for kv in args.set:
        k, sep, v = kv.partition("=")
        if not sep or not k.startswith("VICINO_"):
            ap.error(f"--set wants VICINO_NAME=VALUE, not {kv!r}")
        extra_env[k] = v
    results: dict = {"machine": machine_info(), "code": code_state(), "profile": "quick" if args.quick else "full",
                     "config": {"jobs": n, "concurrency": args.concurrency, "gateway_env": extra_env,
                                "warmup": WARMUP, "shards": SHARDS,
                                "gateway_log_level": args.log_level, "burst_timeout_s": timeout_s,
                                "profiled": bool(args.profile)},
                     "floor": {}, "gateway": {}}
    print(f"Vicino push gateway benchmark ({results['profile']}, {n:,} jobs per run): "
          f"{results['machine']['cpu_count']} CPUs, Python {results['machine']['python']}, "
          f"{results['machine']['date']}")
    errors: dict[str, str] = {}
    t_start = time.monotonic()

    def _overrun(signum, frame):
        raise _Overrun(f"benchmark still running after {HARD_LIMIT_S} s")

    signal.signal(signal.SIGALRM, _overrun)
    signal.alarm(HARD_LIMIT_S)

    def section(name: str, fn):
        try:
            return fn()
        except Exception as e:  # keep going: the other sections still report
            import traceback
            errors[name] = f"{type(e).__name__}: {str(e)[:2000]}"
            print(f"\n!! section {name} failed: {errors[name]}", flush=True)
            traceback.print_exc()
            return None

    procs = Procs()
    fakes: dict[str, Fake] = {}
    emb = None
    r = None
    try:
        with tempfile.TemporaryDirectory(prefix="vicino-bench-push-") as tmpdir:
            tmp = Path(tmpdir)
            try:
                emb = EmbeddedRedis(tmp / "redis", persist=False).start()
                r = redis.Redis.from_url(emb.url)
                fakes, material = start_fakes(procs, tmp)
                log(f"stand-ins: fcm {fakes['fcm'].url}, apns {fakes['apns'].url}; redis {emb.url}")
                # the floors first, with no gateway running beside them
                for kind in ("fcm", "apns"):
                    got = section(f"floor_{kind}", lambda: run_floor(fakes[kind], kind, n, material, timeout_s,
                                                                  args.concurrency))
                    if got:
                        results["floor"][kind] = got
                        log(f"floor {kind}: {got['ok']}/{n} in {got['seconds']} s ({got['per_s']}/s)")
                pools = -(-args.concurrency // 4)
                if pools > 1:  # the same client, its connections split over small pools (FCM, HTTP/1.1)
                    got = section("peer_fcm_pools", lambda: run_floor(fakes["fcm"], "fcm", n, material, timeout_s,
                                                                      args.concurrency, pools))
                    if got:
                        results["floor"]["fcm_pools"] = got
                        log(f"peer fcm, {pools} pools: {got['ok']}/{n} in {got['seconds']} s ({got['per_s']}/s)")
                bench = Bench(tmp, procs, emb, r, fakes, material, args.log_level, extra_env)
                gw = section("gateway1", lambda: bench.start_gateway(args.profile))
                profiler = PySpy(gw.pid, args.profile, procs, tmp) if gw and args.profile and pyspy_binary() else None
                for kind in ("fcm", "apns") if gw else ():
                    got = section(f"gateway_{kind}", lambda: bench.run(kind, kind, n, timeout_s, profiler))
                    if got:
                        results["gateway"][kind] = got
                for kind in ("fcm", "apns") if gw else ():
                    # below capacity: the latency of one push, not of a queue
                    paced_n = max(500, n // 5)
                    got = section(f"gateway_{kind}_paced", lambda: bench.run(
                        f"{kind}p", kind, paced_n, timeout_s, rate=PACED_RATE))
                    if got:
                        got["rate"] = PACED_RATE
                        results["gateway"][f"{kind}_paced"] = got
                if gw and not args.no_two_workers:
                    section("gateway2", bench.start_gateway)
                    for kind in ("fcm", "apns") if len(bench.gateways) == 2 else ():
                        got = section(f"gateway_{kind}_2workers", lambda: bench.run(f"{kind}2", kind, n, timeout_s))
                        if got:
                            results["gateway"][f"{kind}_2workers"] = got
                if profiler:
                    results["worker_profile"] = {ph: summarize_folded(p) for ph, p in profiler.files.items()
                                                 if p.exists()}
                if errors and bench.gateways:
                    results["gateway_log_tail"] = bench.gateways[0].tail(1500)
            finally:
                for f in fakes.values():
                    f.close()
                procs.stop_all()  # gateways, py-spy, stand-ins
                if r is not None:
                    r.close()
                if emb is not None:
                    emb.stop()
            if args.profile and not pyspy_binary():
                import io
                import pstats
                for prof in sorted(args.profile.glob("gateway*.prof")):
                    buf = io.StringIO()
                    pstats.Stats(str(prof), stream=buf).sort_stats("tottime").print_stats(30)
                    results.setdefault("worker_cprofile", {})[prof.name] = buf.getvalue()[-8000:]
    except _Overrun as e:
        errors["overrun"] = str(e)
        print(f"\n!! {e}; writing what was measured", flush=True)
    finally:
        signal.alarm(0)
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    fl, g = results["floor"], results["gateway"]
    results["ratios"] = {
        key: {"per_s_vs_floor": ratio(v["per_s"], fl.get(key.split("_")[0], {}).get("per_s")),
              "steady_vs_floor": ratio(v["steady_per_s"], fl.get(key.split("_")[0], {}).get("steady_per_s")),
              "p50_vs_floor": ratio(v["p50_ms"], fl.get(key.split("_")[0], {}).get("p50_ms")),
              "p99_vs_floor": ratio(v["p99_ms"], fl.get(key.split("_")[0], {}).get("p99_ms")),
              **({"per_s_vs_pools_peer": ratio(v["per_s"], fl["fcm_pools"]["per_s"]),
                  "steady_vs_pools_peer": ratio(v["steady_per_s"], fl["fcm_pools"]["steady_per_s"])}
                 if key.startswith("fcm") and fl.get("fcm_pools") else {})}
        for key, v in g.items()}
    results["targets"] = {key: {"value": v["per_s"], "target": TARGET_PER_S,
                                "pass": bool(v["per_s"] and v["per_s"] >= TARGET_PER_S and v["failures"] == 0)}
                          for key, v in g.items() if not key.endswith("_paced")}  # paced: rate is set
    if errors:
        results["errors"] = errors
    print_tables(results)
    for ph, prof in (results.get("worker_profile") or {}).items():
        print()
        print(table(f"Gateway worker during the {ph} burst (py-spy, {prof['samples']:,} samples): CPU by "
                    "package of the running frame", ["package", "% of samples"], prof["self_by_package"]))
        print()
        print(table(f"... by function, including what it calls ({ph})", ["function (file)", "% of samples"],
                    prof["inclusive"]))
    for name, text in (results.get("worker_cprofile") or {}).items():
        print(f"\ncProfile of {name} (tottime):\n{text}")
    print()
    print(table("Targets", ["run", "deliveries/s", "target", ""],
                [[k, f"{v['value']:,.0f}" if v["value"] else "-", f"{v['target']:,.0f}",
                  "PASS" if v["pass"] else "FAIL"] for k, v in results["targets"].items()]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    shown = out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path
    print(f"JSON: {shown}  (elapsed {results['elapsed_s']:.0f} s)")
    if errors:
        print(f"sections that failed: {', '.join(errors)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
