"""Helpers shared by the integration and e2e tests (no fixtures here: those live in tests/conftest.py)."""
from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import httpx

from vicino.services.runtime.api_keys import AUDIT, KEYS
from testbed.processes import ROOT, free_port, port_block, port_open, served_service, stop_process, wait_until  # noqa: F401
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1, device_shard, events_stream_key
from vicino.services.kernel.problems import REFUSAL_CODES

PROBLEM = "application/problem+json"
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def epoch(value) -> float:
    """A time of a response as epoch seconds; fails unless it is RFC 3339 in UTC with `Z`, to the
    millisecond, as every response writes times (a number included)."""
    assert isinstance(value, str) and RFC3339_Z.match(value), f"not an RFC 3339 UTC time with Z: {value!r}"
    return datetime.fromisoformat(value).timestamp()


def epochs(values) -> list[float]:
    return [epoch(v) for v in values]


def assert_problem(r: httpx.Response, status: int, *needles: str, code: str | None = None) -> dict:
    """A problem+json answer with this status whose `detail` mentions every needle (case-insensitive)
    and whose `code` is `code`. Every 401 and 403 must carry a documented code, asked for or not."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].split(";")[0] == PROBLEM, r.headers.get("content-type")
    body = r.json()
    assert body["status"] == status and body["title"], body
    detail = body.get("detail")
    assert isinstance(detail, str) and detail.strip(), body
    for n in needles:
        assert n.lower() in detail.lower(), f"{n!r} not in detail {detail!r}"
    if status in (401, 403):
        assert body.get("code") in REFUSAL_CODES, f"a {status} without a documented code: {body}"
        assert REFUSAL_CODES[body["code"]].startswith(f"{status}:"), f"{body['code']} is not a {status}: {body}"
    if code is not None:
        assert body.get("code") == code, f"expected code {code!r}: {body}"
    return body


ACCESS_BOOKKEEPING = {AUDIT.encode(), KEYS.encode()}
RATE_BUCKETS = b"vicino:{rl:"  # a refused request still spends its caller's rate: by design


def redis_dump(r, *, access: bool = False) -> dict:
    """Every key with its type and full content: compare before/after a refused request. The
    access bookkeeping (the audit trail, which records refused writes too, and the key store,
    where services register their own keys at start, and the rate limit buckets) only with `access`."""
    out = {}
    for key in sorted(r.keys("*")):
        if not access and (key in ACCESS_BOOKKEEPING or key.startswith(RATE_BUCKETS)):
            continue
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
