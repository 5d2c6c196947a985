"""Helpers shared by the integration tests (no fixtures here: those live in tests/conftest.py)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1, device_shard, events_stream_key

PROBLEM = "application/problem+json"
ROOT = Path(__file__).resolve().parents[2]


def assert_problem(r: httpx.Response, status: int, *needles: str) -> dict:
    """A problem+json answer with this status whose `detail` mentions every needle (case-insensitive)."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].split(";")[0] == PROBLEM, r.headers.get("content-type")
    body = r.json()
    assert body["status"] == status and body["title"], body
    detail = body.get("detail")
    assert isinstance(detail, str) and detail.strip(), body
    for n in needles:
        assert n.lower() in detail.lower(), f"{n!r} not in detail {detail!r}"
    return body


def redis_dump(r) -> dict:
    """Every key with its type and full content: compare before/after a refused request."""
    out = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key).decode()
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "stream":
            value = r.xrange(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        else:  # pragma: no cover - the service writes none of these
            value = kind
        out[key] = (kind, value)
    return out


def stream_events(r, device_id: str, shards: int = 16) -> list[GeofenceEventV1]:
    """The device's events in its shard's geofence event stream, in stream order."""
    key = events_stream_key(device_shard(device_id, shards))
    return [e for e in (GeofenceEventV1.from_stream_fields(f) for _id, f in r.xrange(key))
            if e.device_id == device_id]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)


@contextlib.contextmanager
def served_service(service: str, redis_url: str, log_dir: Path, *, workers: int = 1, env: dict | None = None):
    """`vicino serve <service>` as its own process tree on a free port, as a container runs it;
    yields the base URL once /readyz answers, and stops it (SIGTERM, then SIGKILL) afterwards.
    Its log is `<log_dir>/<service>.log`."""
    from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET

    port = free_port()
    full_env = {**os.environ, "VICINO_REDIS_URL": redis_url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
                "VICINO_TOKEN_SECRET": TOKEN_SECRET, "VICINO_LOG_LEVEL": "WARNING", **(env or {})}
    log_path = log_dir / f"{service}.log"
    log = open(log_path, "wb")
    extra = ["--workers", str(workers)] if workers != 1 else []
    proc = subprocess.Popen([sys.executable, "-m", "vicino.services.cli", "serve", service, "--host", "127.0.0.1",
                             "--port", str(port), *extra], cwd=ROOT, env=full_env,
                            stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 60, 0.1, f"{service} service ready")
        yield url
    finally:
        stop_process(proc)
        log.close()


def stop_process(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def served_geo(redis_url: str, log_dir: Path, *, workers: int = 1, env: dict | None = None):
    return served_service("geo", redis_url, log_dir, workers=workers, env=env)


def fix_until_enter(geo: httpx.Client, headers: dict, device_id: str, lat: float, lon: float, store_id: str,
                    timeout_s: float = 10.0) -> list[dict]:
    """Reports a fix at (lat, lon) every 0.2 s until the geo service answers with an enter at
    `store_id` (a replica learns of a new store from its change log, a moment after the write);
    returns the events of every answer, in order."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while True:
        r = geo.post("/v1/locations", headers=headers, json={"device_id": device_id, "fixes": [
            {"lat": lat, "lon": lon, "accuracy_m": 5, "ts": time.time()}]})
        assert r.status_code == 200, r.text
        events += r.json()["events"]
        if any(e["type"] == "enter" and e["store_id"] == store_id for e in events):
            return events
        assert time.monotonic() < deadline, f"no enter at {store_id} within {timeout_s} s: {events}"
        time.sleep(0.2)
