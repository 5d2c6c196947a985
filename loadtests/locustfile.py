"""Realistic users of a running Vicino stack (`vicino up`, or `python -m loadtests.run`).

- Phones (most users): register a device, give consent, then report batches of GPS fixes as a
  mobile SDK does, moving along real Go!Track trajectories translated onto the demo stores
  around Milano Duomo (`TrajectoryPhone`), walking from store to store (`WalkerPhone`), or
  standing still beside a fence with GPS noise (`StanderPhone`); see `mobility.py`. They open a
  share of the pushes they receive.
- Shoppers read their offers on the web and app channels (`GET /v1/customers/{id}/offers`).
- One operator now and then adjusts the stock of a store that has some.

End to end: the time from the accepted `POST /v1/locations` whose answer carried the visit event
the recommender decides on (`VICINO_DECIDE_ON`, dwell by default) to the push's arrival at the
local FCM-like provider (its own `received_at`), reported as locust request type `E2E`,
name `fix→push`. Needs `VICINO_LOADTEST_SINK_URL` (the sink's base URL); without it, no E2E.

Environment: VICINO_URL (geo, also `--host`), VICINO_RECOMMENDER_URL, VICINO_PUSH_URL,
VICINO_ADMIN_TOKEN; VICINO_LOAD_SHAPE=steady|ramp|spike with VICINO_LOAD_USERS,
VICINO_LOAD_SPAWN_RATE, VICINO_LOAD_DURATION (else `-u`, `-r`, `-t`); VICINO_LOADTEST_SEED,
VICINO_LOADTEST_PACE_S (a phone's seconds between requests), VICINO_LOADTEST_OPEN_SHARE,
VICINO_LOADTEST_EXTRA (a JSON file for the runner's summary). Only loopback and private addresses
are accepted as targets.
"""
from __future__ import annotations

import csv
import gzip
import ipaddress
import itertools
import json
import math
import os
import random
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

from locust import FastHttpUser, LoadTestShape, between, events, task  # first: it monkey-patches with gevent

import gevent  # noqa: E402  (after locust)
import requests  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests import mobility  # noqa: E402

GEO_URL = os.environ.get("VICINO_URL", "http://127.0.0.1:8000").rstrip("/")
REC_URL = os.environ.get("VICINO_RECOMMENDER_URL", "http://127.0.0.1:8001").rstrip("/")
PUSH_URL = os.environ.get("VICINO_PUSH_URL", "http://127.0.0.1:8002").rstrip("/")
ADMIN_TOKEN = os.environ.get("VICINO_ADMIN_TOKEN", "")
SINK_URL = (os.environ.get("VICINO_LOADTEST_SINK_URL") or "").rstrip("/") or None
SEED = int(os.environ.get("VICINO_LOADTEST_SEED", "354"))
PACE_S = float(os.environ.get("VICINO_LOADTEST_PACE_S", "2.0"))
OPEN_SHARE = float(os.environ.get("VICINO_LOADTEST_OPEN_SHARE", "0.3"))
DRAIN_S = float(os.environ.get("VICINO_LOADTEST_DRAIN_S", "3"))
EXTRA_OUT = os.environ.get("VICINO_LOADTEST_EXTRA")
DECIDE_ON = tuple(t.strip() for t in os.environ.get("VICINO_DECIDE_ON", "dwell").split(",") if t.strip())
DWELL_S = float(os.environ.get("VICINO_DWELL_S", "300"))
LEAD_S = (600.0, 840.0)   # simulated time starts this far behind the wall clock (< the 900 s push TTL)
DUOMO = (45.4642, 9.19)
STORES_RADIUS_M = float(os.environ.get("VICINO_LOADTEST_RADIUS_M", "3000"))
DEMO_SHOPPER = "14527"    # merged with the demo phone's customer by `vicino up`: left alone
HISTORY_FILE = "online_retail_recent.csv.gz"
RUN_TAG = format(int(time.time()), "x")


def _private_only(url: str, what: str) -> None:
    """Load goes to this machine (127.0.0.1, what `run.py` uses) or a private network (the
    containers of `infra/compose.yaml`), never to a public address."""
    host = urlparse(url).hostname or ""
    try:
        addrs = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, ValueError):
        addrs = set()
    if not addrs or not all(a.is_loopback or a.is_private for a in addrs):
        raise SystemExit(f"loadtests: {what}={url!r} is not a loopback or private address; "
                         "this load test never sends traffic elsewhere")


for _url, _what in ((GEO_URL, "VICINO_URL"), (REC_URL, "VICINO_RECOMMENDER_URL"), (PUSH_URL, "VICINO_PUSH_URL"),
                    (SINK_URL or "http://127.0.0.1", "VICINO_LOADTEST_SINK_URL")):
    _private_only(_url, _what)


def admin_headers() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def refused(r, ok: tuple[int, ...] = (200,)) -> bool:
    """Marks the request failed, with its status and the start of its body, unless its status is in `ok`."""
    if r.status_code in ok:
        return False
    r.failure(f"{r.status_code}: {r.text[:200]}")
    return True


def history_customers() -> list[str]:
    """The customers of the demo history (real UCI Online Retail shoppers), shuffled by the seed:
    phones take them in turn so that their offers are personalised."""
    ids: set[str] = set()
    try:  # the demo data ship with the package (also where it is installed, not checked out)
        history = Path(str(resources.files("vicino.services.launcher") / "demo_data" / HISTORY_FILE))
    except ModuleNotFoundError:
        history = Path(__file__).resolve().parents[1] / "services" / "launcher" / "demo_data" / HISTORY_FILE
    if history.exists():
        with gzip.open(history, "rt", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                cid = (row.get("CustomerID") or "").strip().removesuffix(".0")
                if cid:
                    ids.add(cid)
    ids.discard(DEMO_SHOPPER)
    out = sorted(ids)
    random.Random(SEED).shuffle(out)
    return out


class World:
    """What every user of this locust process shares: stores, trajectories, customers, the phones
    by push token, the visits seen, and the counters of the summary."""

    def __init__(self) -> None:
        self.ready = False
        self.stores: list[mobility.Store] = []
        self.stocked: list[str] = []
        self.tracks: list[mobility.Track] = []
        self.customers: list[str] = []
        self.phones: dict[str, "Phone"] = {}
        self.phone_numbers = itertools.count()
        self.shopper_numbers = itertools.count()
        self.visits: dict[str, dict[str, float]] = {}     # visit_id -> {event type: wall time of the answer}
        self.pending: dict[str, tuple[dict, float]] = {}  # pushes whose visit was not seen yet
        self.pushed_visits: dict[str, int] = {}
        self.e2e_ms: list[float] = []
        self.e2e_upper_ms: list[float] = []               # from the request's start: an upper bound
        self.c = {"fixes_sent": 0, "fixes_accepted": 0, "fixes_ignored": 0, "batches": 0, "enter": 0, "dwell": 0,
                  "exit": 0, "pushes": 0, "pushes_unmatched": 0, "pushes_other": 0, "pushes_twice": 0,
                  "opens_planned": 0, "opens_sent": 0, "sink_polls": 0, "sink_poll_errors": 0,
                  "phones_started": 0, "negative_e2e": 0}
        self.by_kind: dict[str, int] = {}
        self.requests = 0                                 # every request but the E2E events
        self.full_load: tuple[float, int, int] | None = None  # (time, requests, fixes) once all users run
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.sink_next = 0
        self._pruned_at = 0.0
        self.poller = None
        self.stopping = False

    def load(self) -> None:
        if self.ready:
            return
        self.tracks = mobility.load_tracks()
        self.customers = history_customers()
        r = requests.get(f"{GEO_URL}/v1/stores", headers=admin_headers(), timeout=30,
                         params={"lat": DUOMO[0], "lon": DUOMO[1], "radius_m": STORES_RADIUS_M, "limit": 500})
        r.raise_for_status()
        self.stores = mobility.stores_from_nearby(r.json(), DWELL_S)
        if len(self.stores) < 2:
            raise RuntimeError(f"fewer than 2 circular stores within {STORES_RADIUS_M} m of Duomo: "
                               "start the stack with its demo data (VICINO_DEMO=1)")
        self.stocked = [s.store_id for s in self.stores]
        self.ready = True

    def customer_for(self, n: int) -> str:
        return self.customers[n] if n < len(self.customers) else f"lt-customer-{RUN_TAG}-{n}"

    # --- what the phones saw ---
    def note_events(self, events_: list[dict], wall: float, sent: float) -> None:
        for e in events_:
            kind = e.get("type")
            if kind in self.c:
                self.c[kind] += 1
            if kind in ("enter", "dwell"):
                seen = self.visits.setdefault(e["visit_id"], {})
                if kind not in seen:
                    seen[kind] = wall
                    seen[kind + "_sent"] = sent

    def accepted_at(self, visit_id: str) -> float | None:
        seen = self.visits.get(visit_id)
        if not seen:
            return None
        kinds = [k for k in DECIDE_ON if k in seen]
        return min(seen[k] for k in kinds) if kinds else None

    def sent_for(self, visit_id: str) -> float | None:
        seen = self.visits.get(visit_id) or {}
        kinds = [k for k in DECIDE_ON if k in seen]
        return min(seen[k + "_sent"] for k in kinds) if kinds else None

    # --- what the provider received ---
    def on_push(self, environment, rec: dict) -> None:
        message = ((rec.get("json") or {}).get("message") or {})
        data = message.get("data") or {}
        visit_id = data.get("visit_id")
        if not visit_id:
            self.c["pushes_other"] += 1
            return
        self.c["pushes"] += 1
        n = self.pushed_visits.get(visit_id, 0) + 1
        self.pushed_visits[visit_id] = n
        if n > 1:
            self.c["pushes_twice"] += 1
        if not self._match(environment, rec, data):
            self.pending[visit_id] = (rec, time.time())
        phone = self.phones.get(rec.get("token") or message.get("token") or "")
        if phone is not None and data.get("delivery_id"):
            phone.pushed(data["delivery_id"], float(rec["received_at"]))

    def _match(self, environment, rec: dict, data: dict) -> bool:
        t0 = self.accepted_at(data["visit_id"])
        if t0 is None:
            return False
        ms = (float(rec["received_at"]) - t0) * 1000.0
        self.e2e_upper_ms.append((float(rec["received_at"]) - self.sent_for(data["visit_id"])) * 1000.0)
        if ms < 0:  # the push beat this process to reading the answer (a busy client): count it as 0
            self.c["negative_e2e"] += 1
            ms = 0.0
        self.e2e_ms.append(ms)
        environment.events.request.fire(request_type="E2E", name="fix→push", response_time=ms,
                                        response_length=0, exception=None, context={})
        return True

    def retry_pending(self, environment, final: bool = False) -> None:
        now = time.time()
        for visit_id, (rec, seen) in list(self.pending.items()):
            data = rec["json"]["message"]["data"]
            if self._match(environment, rec, data):
                del self.pending[visit_id]
            elif final or now - seen > 30:
                del self.pending[visit_id]
                self.c["pushes_unmatched"] += 1

    def prune(self) -> None:
        """Visits older than the push's lifetime can no longer get one: forgotten, once a minute."""
        now = time.time()
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        keep = now - 1200
        self.visits = {v: t for v, t in self.visits.items() if max(t.values()) >= keep}
        self.pushed_visits = {v: n for v, n in self.pushed_visits.items() if v in self.visits}

    def poll_sink(self, environment, session: requests.Session) -> None:
        self.c["sink_polls"] += 1
        try:
            r = session.get(f"{SINK_URL}/_control/received", params={"since": self.sink_next}, timeout=5)
            r.raise_for_status()
            records = r.json()
        except (requests.RequestException, ValueError):
            self.c["sink_poll_errors"] += 1
            return
        for rec in records:
            self.sink_next = max(self.sink_next, int(rec["index"]) + 1)
            if str(rec.get("path", "")).endswith("messages:send") and rec.get("status") == 200:
                self.on_push(environment, rec)
        self.retry_pending(environment)

    def poll_forever(self, environment) -> None:
        """One greenlet: the sink's new records every 100 ms (by index); latency from its own clock."""
        session = requests.Session()
        while not self.stopping:
            self.poll_sink(environment, session)
            self.prune()
            gevent.sleep(0.1)

    def full_load_rates(self) -> dict | None:
        """Rates from the moment every user was running (the ramp left out) to the stop."""
        if self.full_load is None or self.stopped_at is None:
            return None
        t0, n0, f0 = self.full_load
        span = self.stopped_at - t0
        if span <= 1:
            return None
        return {"since_s": round(t0 - (self.started_at or t0), 1), "span_s": round(span, 1),
                "requests_per_s": round((self.requests - n0) / span, 1),
                "fixes_per_s": round((self.c["fixes_sent"] - f0) / span, 1)}

    def extra(self) -> dict:
        e2e = sorted(self.e2e_ms)
        upper = sorted(self.e2e_upper_ms)

        def pct(p: float, xs: list[float] = e2e):
            return None if not xs else round(xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))], 1)

        return {"run_tag": RUN_TAG, "seed": SEED, "pace_s": PACE_S, "open_share": OPEN_SHARE, "decide_on": DECIDE_ON,
                "started_at": self.started_at, "stopped_at": self.stopped_at, "stores": len(self.stores),
                "tracks": len(self.tracks), "tracks_file": str(mobility.gotrack_points_path()),
                "history_customers": len(self.customers), "counters": dict(self.c),
                "phones_by_kind": dict(self.by_kind), "requests": self.requests,
                "full_load": self.full_load_rates(),
                "e2e": {"count": len(e2e), "p50": pct(50), "p95": pct(95), "p99": pct(99),
                        "max": round(e2e[-1], 1) if e2e else None},
                "e2e_from_request_start": {"count": len(upper), "p50": pct(50, upper), "p99": pct(99, upper)},
                "e2e_ms": [round(x, 2) for x in self.e2e_ms]}


WORLD = World()


@events.test_start.add_listener
def _test_start(environment, **_kw) -> None:
    if environment.host:
        _private_only(environment.host, "--host")
    WORLD.load()
    WORLD.started_at = time.time()
    WORLD.stopping = False
    if SINK_URL and WORLD.poller is None:
        WORLD.poller = gevent.spawn(WORLD.poll_forever, environment)


@events.request.add_listener
def _count_request(request_type, **_kw) -> None:
    if request_type != "E2E":
        WORLD.requests += 1


@events.spawning_complete.add_listener
def _spawned(user_count, **_kw) -> None:
    target = int(os.environ.get("VICINO_LOAD_USERS") or 0)
    if SHAPE == "steady" and WORLD.full_load is None and user_count >= target:
        WORLD.full_load = (time.time(), WORLD.requests, WORLD.c["fixes_sent"])


@events.test_stop.add_listener
def _test_stop(environment, **_kw) -> None:
    WORLD.stopped_at = time.time()
    WORLD.stopping = True
    if WORLD.poller is not None:
        WORLD.poller.join(timeout=2)
        WORLD.poller = None
    if SINK_URL:  # pushes for the last visits are still on their way: a short, bounded drain
        session = requests.Session()
        deadline = time.time() + DRAIN_S
        while time.time() < deadline:
            WORLD.poll_sink(environment, session)
            gevent.sleep(0.1)
        WORLD.retry_pending(environment, final=True)
    if EXTRA_OUT:
        Path(EXTRA_OUT).write_text(json.dumps(WORLD.extra()))


# --- users ------------------------------------------------------------------------------------------

class Phone(FastHttpUser):
    """A phone with the app: registration and consent once, then batches of fixes at its pace."""

    abstract = True
    host = GEO_URL
    network_timeout = 30.0
    connection_timeout = 10.0
    motion_kind = "motion"

    def wait_time(self) -> float:
        due = self._last_start + PACE_S * self.rng.uniform(0.8, 1.2)
        return max(0.0, due - time.monotonic())

    def make_motion(self, rng: random.Random, t_start: float) -> mobility.Motion:
        raise NotImplementedError

    def on_start(self) -> None:
        WORLD.load()
        self.n = next(WORLD.phone_numbers)
        self.rng = random.Random(SEED * 1_000_003 + self.n)
        self._last_start = time.monotonic()
        self.customer_id = WORLD.customer_for(self.n)
        self.device_id = f"lt-{RUN_TAG}-{self.n}"
        self.push_token = f"lt{RUN_TAG}-{self.n}:APA91b" + "".join(self.rng.choices("abcdefghijklmnop0123456789_-", k=64))
        self.token: str | None = None
        self.opens: list[tuple[float, str]] = []
        now = time.time()
        self.sdk = mobility.Sdk(self.make_motion(self.rng, now - self.rng.uniform(*LEAD_S)))
        WORLD.c["phones_started"] += 1
        WORLD.by_kind[self.motion_kind] = WORLD.by_kind.get(self.motion_kind, 0) + 1
        self.register()

    def on_stop(self) -> None:
        WORLD.phones.pop(self.push_token, None)

    def register(self) -> None:
        with self.client.post("/v1/devices", name="/v1/devices", headers=admin_headers(), catch_response=True,
                              json={"device_id": self.device_id, "customer_id": self.customer_id,
                                    "platform": "android", "push_token": self.push_token,
                                    "timezone": "Europe/Rome"}) as r:
            if refused(r, (200, 201)):
                return
            token = r.json()["token"]
        with self.client.put(f"/v1/customers/{self.customer_id}/consent", name="/v1/customers/{id}/consent",
                             headers=admin_headers(), catch_response=True,
                             json={"location": True, "marketing": True, "personalisation": True}) as r:
            if refused(r):
                return
        self.token = token
        WORLD.phones[self.push_token] = self

    def pushed(self, delivery_id: str, received_at: float) -> None:
        """The push reached the phone (the provider's record): the user opens a share of them."""
        if self.rng.random() < OPEN_SHARE:
            WORLD.c["opens_planned"] += 1
            self.opens.append((received_at + self.rng.uniform(3.0, 15.0), delivery_id))

    def _open_due(self) -> None:
        now = time.time()
        due = [o for o in self.opens if o[0] <= now]
        if not due:
            return
        self.opens = [o for o in self.opens if o[0] > now]
        for _, delivery_id in due:
            WORLD.c["opens_sent"] += 1
            with self.client.post(f"{PUSH_URL}/v1/deliveries/{delivery_id}/opened",
                                  name="/v1/deliveries/{id}/opened", catch_response=True,
                                  headers={"Authorization": f"Bearer {self.token}"}) as r:
                refused(r)

    @task
    def report_fixes(self) -> None:
        self._last_start = time.monotonic()
        if self.token is None:
            self.register()
            return
        self._open_due()
        fixes = self.sdk.next_batch(time.time())
        if not fixes:
            return
        sent = time.time()
        with self.client.post("/v1/locations", name="/v1/locations", catch_response=True,
                              headers={"Authorization": f"Bearer {self.token}"},
                              json={"device_id": self.device_id, "fixes": fixes}) as r:
            wall = time.time()
            if refused(r):
                return
            try:
                body = r.json()
            except ValueError:
                r.failure("not JSON")
                return
        WORLD.c["batches"] += 1
        WORLD.c["fixes_sent"] += len(fixes)
        WORLD.c["fixes_accepted"] += body.get("accepted", 0)
        WORLD.c["fixes_ignored"] += len(body.get("ignored") or ())
        WORLD.note_events(body.get("events") or (), wall, sent)


class TrajectoryPhone(Phone):
    weight = 5
    motion_kind = "trajectory"

    def make_motion(self, rng, t_start):
        return mobility.TrajectoryMotion(rng, WORLD.stores, t_start, WORLD.tracks)


class WalkerPhone(Phone):
    weight = 2
    motion_kind = "walker"

    def make_motion(self, rng, t_start):
        return mobility.WalkerMotion(rng, WORLD.stores, t_start)


class StanderPhone(Phone):
    weight = 2
    motion_kind = "stander"

    def make_motion(self, rng, t_start):
        return mobility.StanderMotion(rng, WORLD.stores, t_start)


class Shopper(FastHttpUser):
    """The omnichannel read: a customer's offers on the web site or in the app."""

    weight = 2
    host = REC_URL
    wait_time = between(2, 6)

    def on_start(self) -> None:
        WORLD.load()
        self.rng = random.Random(SEED * 7_919 + next(WORLD.shopper_numbers))

    @task
    def offers(self) -> None:
        cid = self.rng.choice(WORLD.customers) if WORLD.customers else "lt-nobody"
        channel = self.rng.choice(("web", "app"))
        with self.client.get(f"{REC_URL}/v1/customers/{cid}/offers?channel={channel}&k=10",
                             name="/v1/customers/{id}/offers", headers=admin_headers(), catch_response=True) as r:
            if not refused(r) and "offers" not in r.json():
                r.failure("no offers field")


class Operator(FastHttpUser):
    """Now and then: a sale or a delivery at a store that has stock (409 when it would go below 0)."""

    fixed_count = 1
    host = REC_URL
    wait_time = between(5, 15)

    def on_start(self) -> None:
        WORLD.load()
        self.rng = random.Random(SEED * 104_729)

    @task
    def adjust_stock(self) -> None:
        store_id = self.rng.choice(WORLD.stocked)
        with self.client.get(f"{REC_URL}/v1/stores/{store_id}/inventory", name="/v1/stores/{id}/inventory",
                             headers=admin_headers(), catch_response=True) as r:
            if refused(r):
                return
            stock = r.json()
        if not stock:
            return
        items = self.rng.sample(sorted(stock), k=min(len(stock), self.rng.randint(1, 3)))
        deltas = {i: (-self.rng.randint(1, 2) if self.rng.random() < 0.6 else self.rng.randint(1, 6)) for i in items}
        with self.client.patch(f"{REC_URL}/v1/stores/{store_id}/inventory", name="/v1/stores/{id}/inventory",
                               headers=admin_headers(), json=deltas, catch_response=True) as r:
            if r.status_code == 409:
                r.success()  # a sale of what is no longer there: refused as a whole, expected
            else:
                refused(r)


# --- load shapes ----------------------------------------------------------------------------------

def shape_params(shape: LoadTestShape) -> tuple[int, float, float]:
    """Users, spawn rate, duration: the VICINO_LOAD_* variables, else `-u`, `-r`, `-t`."""
    opts = getattr(getattr(shape.runner, "environment", None), "parsed_options", None)
    users = os.environ.get("VICINO_LOAD_USERS") or getattr(opts, "num_users", None) or 20
    rate = os.environ.get("VICINO_LOAD_SPAWN_RATE") or getattr(opts, "spawn_rate", None) or 10
    duration = os.environ.get("VICINO_LOAD_DURATION") or getattr(opts, "run_time", None) or 60
    return int(users), float(rate), float(duration)


class SteadyShape(LoadTestShape):
    """Up to the users at the spawn rate, then held until the duration."""

    use_common_options = True

    def tick(self):
        users, rate, duration = shape_params(self)
        return None if self.get_run_time() >= duration else (users, rate)


class RampShape(LoadTestShape):
    """Ten equal steps from a tenth of the users to all of them over the duration."""

    use_common_options = True

    def tick(self):
        users, rate, duration = shape_params(self)
        t = self.get_run_time()
        if t >= duration:
            return None
        step = min(10, int(t // (duration / 10)) + 1)
        return max(1, round(users * step / 10)), rate


class SpikeShape(LoadTestShape):
    """A base of 30% of the users; all of them at once (spawned at least at users/s) in the middle
    fifth of the duration; back to the base."""

    use_common_options = True

    def tick(self):
        users, rate, duration = shape_params(self)
        t = self.get_run_time()
        if t >= duration:
            return None
        base = max(1, round(users * 0.3))
        if 0.4 * duration <= t < 0.6 * duration:
            return users, max(rate, float(users))
        return base, max(rate, float(users))


SHAPES = {"steady": SteadyShape, "ramp": RampShape, "spike": SpikeShape}
SHAPE = os.environ.get("VICINO_LOAD_SHAPE", "steady")
if SHAPE not in SHAPES:
    raise SystemExit(f"VICINO_LOAD_SHAPE={SHAPE!r}: one of {', '.join(SHAPES)}")
for _name, _cls in SHAPES.items():  # locust runs the one shape class that is not abstract
    _cls.abstract = _name != SHAPE
