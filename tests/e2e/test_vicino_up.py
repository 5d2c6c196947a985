"""`vicino up` as a user runs it: a subprocess, a banner, the stack answering on one port, and
Ctrl-C (SIGINT) taking everything down, Redis included. Then `vicino stores import`."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import assert_problem, port_block, port_open, wait_until

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VICINO = Path(sys.executable).with_name("vicino")
DUOMO = (45.4642, 9.19)
BANNER_TIMEOUT_S = 180  # a hang guard: the demo imports history and trains; 2 shared cores
STOP_TIMEOUT_S = 20


def _cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return out


class Up:
    """One `vicino up` process, its stdout collected by a reader thread."""

    def __init__(self, tmp_path: Path, demo: bool, env_extra: dict | None = None) -> None:
        self.port = port_block(6)  # the front door and the five services behind it
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self.data_dir = self.cwd / "var"  # the default data dir, seen from the user's directory
        env = {k: v for k, v in os.environ.items() if not k.startswith("VICINO_")}
        env.update({"VICINO_PORT": str(self.port), "VICINO_DATA_DIR": str(self.data_dir),
                    "VICINO_DEMO": "1" if demo else "0", **(env_extra or {})})
        self.env = env
        cmd = [str(VICINO), "up"] if VICINO.exists() else [sys.executable, "-m", "vicino.services.cli", "up"]
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self._readers:
            t.start()
        self.base = f"http://127.0.0.1:{self.port}"
        self.redis_port: int | None = None
        self.child_pids: set[int] = set()

    @staticmethod
    def _read(stream, sink: list[str]) -> None:
        for line in iter(stream.readline, b""):
            sink.append(line.decode(errors="replace"))

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    def wait_for_banner(self) -> str:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"vicino up exited with {self.proc.returncode}:\n{self.stdout}\n{''.join(self.err)}")
            return "Ctrl-C stops everything" in self.stdout

        wait_until(ready, BANNER_TIMEOUT_S, 0.1, "the `vicino up` banner")
        text = self.stdout
        self.redis_port = int(re.search(r"redis\s+redis://127\.0\.0\.1:(\d+)/0", text).group(1))
        # the processes of this stack, remembered so that a failing test can still clean up
        for pid, cmd in _cmdlines().items():
            if pid != self.proc.pid and (str(self.data_dir) in cmd or f"--port {self.port}" in cmd
                                         or f"127.0.0.1:{self.redis_port}" in cmd):
                self.child_pids.add(pid)
        return text

    def field(self, pattern: str) -> str:
        m = re.search(pattern, self.stdout)
        assert m, f"{pattern!r} not in the banner:\n{self.stdout}"
        return m.group(1)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers (children run in their own sessions)
        return self.proc.wait(STOP_TIMEOUT_S)

    def leftovers(self) -> list[str]:
        out = []
        for pid, cmd in _cmdlines().items():
            if str(self.data_dir) in cmd or f"--port {self.port} " in f"{cmd} " \
                    or (self.redis_port and f"127.0.0.1:{self.redis_port}" in cmd):
                if pid != os.getpid():
                    out.append(f"{pid}: {cmd}")
        return out

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        still = {int(x.split(":")[0]) for x in self.leftovers()}
        for pid in self.child_pids & still:  # only processes this stack started, if still running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for t in self._readers:
            t.join(5)


@pytest.fixture
def up_factory(tmp_path):
    started: list[Up] = []

    def start(demo: bool, **env_extra) -> Up:
        u = Up(tmp_path, demo, env_extra)
        started.append(u)
        return u

    yield start
    for u in started:
        u.cleanup()


def _assert_stopped(up: Up) -> None:
    assert up.interrupt() == 0, "".join(up.err)
    assert "vicino: stopped." in "".join(up.err)
    assert not port_open(up.port), "the front door still listens"
    assert not port_open(up.port + 1), "the recommender still listens"
    assert not port_open(up.port + 2), "the push gateway still listens"
    assert not port_open(up.port + 3), "the scheduler still listens"
    assert not port_open(up.port + 5), "the geo service still listens"
    assert not (up.data_dir / "stack.json").exists(), "the stack file outlives the stack"
    assert not port_open(up.redis_port), "redis still listens"
    wait_until(lambda: not up.leftovers(), 5, what="no process of the stack left")
    assert up.child_pids, "the stack's processes were never seen"


def test_vicino_up_with_demo_then_ctrl_c(up_factory):
    # no quiet hours: the fix below then ends, through the demo's Italian campaign (on enter), as a
    # push in the log provider's output at any hour
    up = up_factory(demo=True, VICINO_QUIET_HOURS="")
    banner = up.wait_for_banner()
    assert "Vicino is up." in banner and f"{up.base}/docs" in banner
    admin = {"Authorization": "Bearer " + up.field(r"admin token\s+(\S+)")}
    device = {"Authorization": "Bearer " + up.field(r"Authorization: Bearer (v1\.[\w\-]+\.[\w\-]+)")}
    assert re.search(r"demo data\s+(\d+) stores", banner) and int(up.field(r"demo data\s+(\d+) stores")) > 2000
    secrets = up.data_dir / "secrets.json"
    assert secrets.exists() and stat.S_IMODE(secrets.stat().st_mode) == 0o600

    with httpx.Client(base_url=up.base, timeout=30) as http:
        r = http.get("/readyz")
        assert r.status_code == 200 and r.json()["services"]["geo"]["checks"] == {"redis": "ok", "store_index": "ok"}
        r = http.get("/docs")
        assert r.status_code == 200 and "swagger" in r.text.lower()
        doc = http.get("/openapi.json").json()
        assert doc["info"]["title"] == "Vicino API"
        assert {op["x-vicino-service"] for item in doc["paths"].values() for op in item.values()} == \
            {"geo", "recommender", "push", "scheduler"}

        near = http.get("/v1/stores", headers=admin, params={"lat": DUOMO[0], "lon": DUOMO[1], "radius_m": 2000})
        assert near.status_code == 200, near.text
        ids = [s["store_id"] for s in near.json()]
        assert any(i.startswith("milano-nil-") for i in ids) and any(i.startswith("mimit-") for i in ids), ids
        containing = [s for s in near.json() if s["distance_m"] == 0]
        assert containing and all(s["store_id"].startswith("milano-nil-") for s in containing)

        r = http.post("/v1/locations", headers=device, json={"device_id": "demo-phone-1", "fixes": [
            {"lat": DUOMO[0], "lon": DUOMO[1], "accuracy_m": 10, "ts": time.time()}]})
        assert r.status_code == 200, r.text
        events = r.json()["events"]
        assert [e["type"] for e in events] == ["enter"] * len(events) and events
        assert {e["store_id"] for e in events} == {s["store_id"] for s in containing}
        assert_problem(http.get("/v1/stores", params={"lat": 45, "lon": 9}), 401)

    # the per-service ports stay, for operators
    for name, offset in (("geo", 5), ("recommender", 1), ("push", 2), ("scheduler", 3), ("recommender-worker", 4)):
        assert up.field(rf"{name} (http://127\.0\.0\.1:\d+)") == f"http://127.0.0.1:{up.port + offset}"
        assert httpx.get(f"http://127.0.0.1:{up.port + offset}/readyz", timeout=10).status_code == 200, name
    # the recommender through the same base URL: real catalogue and history, the demo customer
    # merged with a real shopper
    rec_url = up.base
    with httpx.Client(base_url=rec_url, timeout=30) as rec:
        assert rec.get("/readyz").status_code == 200
        profile = rec.get("/v1/customers/demo-customer-1", headers=device)
        assert profile.status_code == 200, profile.text
        p = profile.json()
        assert p["customer_id"] == "14527" and p["merged_from"] == ["demo-customer-1"]
        assert p["history"]["hot_interactions"] > 100 and p["last_purchases"]
        assert [d["device_id"] for d in p["devices"]] == ["demo-phone-1"]
        # the visit of the fix above reaches the profile through the worker
        wait_until(lambda: rec.get("/v1/customers/14527", headers=admin).json()["last_visits"], 15,
                   what="the demo visit in the profile")
        offers = rec.get("/v1/offers", headers=admin, params={"limit": 1000}).json()["offers"]
        assert len(offers) == 300
        prices = {rec.get(f"/v1/offers/{offers[0]['offer_id']}", headers=device, params={"channel": ch}
                          ).json()["canonical_price"] for ch in ("web", "app", "store")}
        assert len(prices) == 1
        # the demo model, trained on the real history at start, serves the demo customer's offers
        assert "LightFM trained on that history and published" in banner
        wait_until(lambda: rec.get("/v1/model", headers=admin).json()["serving"], 20, what="the demo model serving")
        mine = rec.get("/v1/customers/demo-customer-1/offers", headers=device, params={"k": 5}).json()
        assert len(mine["offers"]) == 5 and mine["customer_id"] == "14527" and mine["model_version"]
        assert {o["reason"] for o in mine["offers"]} <= {"model", "cold_start_features"}

    # the push gateway: the visit's decision went out through the log provider (no provider configured)
    push_url = up.base
    assert "pushes are written to" in banner
    with httpx.Client(base_url=push_url, timeout=30) as push:
        assert push.get("/readyz").status_code == 200
        sent = wait_until(lambda: [d for d in push.get("/v1/deliveries", headers=admin,
                                                        params={"customer_id": "14527"}).json()["deliveries"]
                                   if d["status"] == "sent"], 30, what="the demo push delivered")
        assert sent[0]["provider"] == "log" and sent[0]["device_id"] == "demo-phone-1"
        assert sent[0]["campaign_id"] == "demo-visit-it" and "demo-visit-it, demo-discover-en" in banner
        # why she got it: the campaign, its Italian message, the delivery
        why = push.get(f"/v1/visits/{sent[0]['visit_id']}/decision", headers=admin)
        assert why.status_code == 200, why.text
        [d] = why.json()["decisions"]
        assert (d["campaign_id"], d["message"]["locale"], d["delivery"]["status"]) == ("demo-visit-it", "it", "sent")
        assert ": ora da " in d["message"]["title"] and " invece di " in d["message"]["body"]
        # the phone was registered under demo-customer-1, since merged into 14527: found all the same
        by_device = push.get("/v1/deliveries", headers=admin, params={"device_id": "demo-phone-1"}).json()
        assert by_device["customer_id"] == "14527" and by_device["deliveries"][0]["delivery_id"] == sent[0]["delivery_id"]
        log = (up.data_dir / "logs" / "push.log").read_text()
        assert sent[0]["delivery_id"] in log and "demo-fcm-token" not in log

    # the scheduler: every job listed with its schedule; one run now through the API
    sched_url = up.base
    with httpx.Client(base_url=sched_url, timeout=30, headers=admin) as sched:
        jobs = {j["name"]: j for j in sched.get("/v1/jobs").json()["jobs"]}
        assert jobs["retrain"]["schedule"] == "daily 03:30" and jobs["trim_streams"]["next_run_at"]
        assert sched.post("/v1/jobs/kpi_rollup/runs").status_code == 202
        wait_until(lambda: (sched.get("/v1/jobs/kpi_rollup").json()["last_run"] or {}).get("outcome") == "ok", 30,
                   what="the KPI roll-up run")
    with httpx.Client(base_url=rec_url, timeout=30, headers=admin) as rec:
        k = rec.get("/v1/kpis").json()
        assert k["decisions"]["sent"] >= 1 and k["deliveries"]["sent"] >= 1

    _assert_stopped(up)


def test_vicino_up_without_demo_and_stores_import(up_factory):
    up = up_factory(demo=False)
    banner = up.wait_for_banner()
    assert "demo data    none (VICINO_DEMO=0)" in banner and "demo device" not in banner
    admin = {"Authorization": "Bearer " + up.field(r"admin token\s+(\S+)")}

    with httpx.Client(base_url=up.base, timeout=30, headers=admin) as http:
        assert http.get("/readyz").status_code == 200
        assert http.get("/v1/stores", params={"lat": DUOMO[0], "lon": DUOMO[1], "radius_m": 50_000}).json() == []
        assert "vicino_geo_index_stores 0.0" in http.get("/metrics").text

        # as a user would, right after `vicino up`: the admin token comes from the data dir
        env = {**up.env, "VICINO_URL": up.base}
        cli = [str(VICINO)] if VICINO.exists() else [sys.executable, "-m", "vicino.services.cli"]
        csv = subprocess.run(cli + ["stores", "import", str(FIXTURES / "stores_small.csv")], cwd=up.cwd, env=env,
                             capture_output=True, text=True, timeout=60)
        assert csv.returncode == 0, csv.stderr
        assert "5 features: 4 created, 0 updated, 1 rejected" in csv.stdout, csv.stdout
        assert re.search(r"rejected #4 csv-broken: .*latitude must be a number", csv.stdout), csv.stdout

        geo = subprocess.run(cli + ["stores", "import", str(FIXTURES / "stores_small.geojson"), "--url", up.base,
                                    "--token", admin["Authorization"].split()[1]],
                             cwd=up.cwd, env={k: v for k, v in env.items() if k not in ("VICINO_URL", "VICINO_DATA_DIR")},
                             capture_output=True, text=True, timeout=60)
        assert geo.returncode == 0, geo.stderr
        assert "3 features: 2 created, 0 updated, 1 rejected" in geo.stdout, geo.stdout
        assert re.search(r"rejected #2 gj-bad-radius: .*radius_m 2 is outside", geo.stdout), geo.stdout

        near = http.get("/v1/stores", params={"lat": DUOMO[0], "lon": DUOMO[1], "radius_m": 5000}).json()
        assert sorted(s["store_id"] for s in near) == sorted(
            ["csv-duomo", "csv-cadorna", "csv-centrale", "csv-navigli", "gj-galleria", "gj-brera"])
        duomo = http.get("/v1/stores/csv-duomo").json()
        assert duomo["properties"]["radius_m"] == 40 and duomo["properties"]["opening_hours"] == "Mo-Sa 08:00-20:00"
        assert duomo["properties"]["extra"] == {"address": "Piazza del Duomo 1"}
        assert http.get("/v1/stores/csv-cadorna").json()["properties"]["radius_m"] == 80  # the CLI's default
        assert http.get("/v1/stores/gj-galleria").json()["geometry"]["type"] == "Polygon"
        assert http.get("/v1/stores/csv-broken").status_code == 404

        again = subprocess.run(cli + ["stores", "import", str(FIXTURES / "stores_small.csv")], cwd=up.cwd, env=env,
                               capture_output=True, text=True, timeout=60)
        assert "5 features: 0 created, 4 updated, 1 rejected" in again.stdout, again.stdout

        # a second terminal, nothing exported: every command finds the stack through its stack file
        bare = {k: v for k, v in os.environ.items() if not k.startswith("VICINO_")}

        def vicino(*args: str) -> subprocess.CompletedProcess:
            done = subprocess.run(cli + list(args), cwd=up.cwd, env=bare, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"vicino {' '.join(args)}: {done.stderr}"
            return done

        stack = json.loads((up.data_dir / "stack.json").read_text())
        assert stack["front_url"] == up.base and "token" not in json.dumps(stack)  # secrets stay in secrets.json
        assert "operator" in vicino("keys", "create", "shop-ops", "--role", "operator").stdout
        assert "hot history: ok" in vicino("history", "import", str(FIXTURES / "online_retail_slice.csv")).stdout
        vicino("train", "--epochs", "2", "--skip-test")
        assert list((up.data_dir / "models").iterdir()), "train wrote outside the stack's model directory"
        assert "version" in vicino("models", "list").stdout
        assert "retrain" in vicino("jobs", "list").stdout

    # a second stack on the same ports names the service, the port and what to do
    second = up_factory(demo=False, VICINO_PORT=str(up.port), VICINO_DATA_DIR=str(up.cwd / "other"))
    assert second.proc.wait(60) == 1
    second.cleanup()
    assert re.search(rf"geo cannot start: port {up.port + 5} on 127\.0\.0\.1 is already in use.*set VICINO_PORT",
                     "".join(second.err)), "".join(second.err)

    _assert_stopped(up)
