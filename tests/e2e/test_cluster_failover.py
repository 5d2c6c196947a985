"""A Redis Cluster master dies under the stack (issue #14): a 3-master, 3-replica cluster of real
redis-servers (`cluster-node-timeout 2000`, AOF every second), every service a process of its own
whose `VICINO_REDIS_URL` names only the master that will be killed, phones dwelling at stores,
and that master SIGKILLed after half of them have entered. The first and the last master are
killed, each in a run of its own.

Required: every phone's visit ends as exactly one push (none lost, none twice); every process
(geo, recommender, recommender-worker, push gateway, scheduler) is ready again within 10 s of the
replica's promotion, without a restart."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from tests.conftest import ADMIN_TOKEN
from tests.push_provider_fixtures import fcm, fcm_server, material  # noqa: F401  (fixtures)
from tests.support import served_service, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PHONES = 24
STORES = [(f"fo-store-{i}", 45.07, 7.68 + 0.004 * i) for i in range(4)]
RECOVERY_S = 10.0


@contextlib.contextmanager
def stack(redis_url: str, tmp_path: Path, fcm_server):
    """Every service once, each its own process; yields name -> base URL."""
    decide = {"VICINO_DECIDE_ON": "enter", "VICINO_QUIET_HOURS": "", "VICINO_HOLDOUT_PERCENT": "0",
              "VICINO_HISTORY_DIR": str(tmp_path / "history"), "VICINO_MODEL_DIR": str(tmp_path / "models"),
              "VICINO_REDIS_WAIT_S": "30", "VICINO_REDIS_WAIT_REPLICAS": "1"}
    with contextlib.ExitStack() as es:
        for name in ("geo", "rec", "worker", "push", "scheduler"):
            (tmp_path / name).mkdir()
        urls = {"geo": es.enter_context(served_service("geo", redis_url, tmp_path / "geo", env={}))}
        urls["recommender"] = es.enter_context(served_service(
            "recommender", redis_url, tmp_path / "rec", env={"VICINO_GEO_URL": urls["geo"], **decide}))
        urls["recommender-worker"] = es.enter_context(served_service(
            "recommender-worker", redis_url, tmp_path / "worker", env={"VICINO_GEO_URL": urls["geo"], **decide}))
        urls["push"] = es.enter_context(served_service("push", redis_url, tmp_path / "push", env={
            "VICINO_GEO_URL": urls["geo"], "VICINO_RECOMMENDER_URL": urls["recommender"],
            "VICINO_FCM_CREDENTIALS": str(fcm_server.sa.path), "VICINO_FCM_ENDPOINT": fcm_server.url,
            "VICINO_REDIS_WAIT_REPLICAS": "1"}))
        urls["scheduler"] = es.enter_context(served_service("scheduler", redis_url, tmp_path / "scheduler", env={
            **decide}))
        yield urls


class Phone:
    """One phone; `report` is called from one thread at a time."""

    def __init__(self, n: int, geo: httpx.Client) -> None:
        self.customer, self.device, self.geo = f"fo-c{n}", f"fo-phone-{n}", geo
        self.store_id, self.lat, self.lon = STORES[n % len(STORES)]
        self.token: dict = {}
        self.entered = False
        self.failed_requests = 0

    def register(self) -> None:
        reg = self.geo.post("/v1/devices", headers=ADMIN, json={
            "device_id": self.device, "customer_id": self.customer, "platform": "android",
            "push_token": f"fcm-{self.customer}", "timezone": "Europe/Rome"})
        assert reg.status_code in (200, 201), reg.text
        consent = self.geo.put(f"/v1/customers/{self.customer}/consent", headers=ADMIN,
                               json={"location": True, "marketing": True, "personalisation": True})
        assert consent.status_code == 200, consent.text
        self.token = {"Authorization": "Bearer " + reg.json()["token"]}

    def report(self) -> None:
        """One fix at the store, as the app does while the customer dwells; a refused request
        (503 while the cluster fails over) is retried with the next fix, as the SDK does."""
        try:
            r = self.geo.post("/v1/locations", headers=self.token, json={"device_id": self.device, "fixes": [
                {"lat": self.lat, "lon": self.lon, "accuracy_m": 5, "ts": time.time()}]})
        except httpx.HTTPError:
            self.failed_requests += 1
            return
        if r.status_code != 200:
            assert r.status_code == 503, r.text  # Redis away: never a 500, never another answer
            self.failed_requests += 1
            return
        if any(e["type"] == "enter" and e["store_id"] == self.store_id for e in r.json()["events"]):
            self.entered = True


def replicate_everything(cluster: EmbeddedRedisCluster) -> None:
    """What was written before the scenario (stores, devices, consent) reaches the replicas."""
    for node in cluster.live_masters():
        with redis_lib.Redis(port=node.port) as r:
            assert r.execute_command("WAIT", 1, 5000) >= 1


def ready_again(urls: dict, deadline_s: float) -> dict[str, float]:
    """Seconds until each process's /readyz answers 200 (every process polled in turn)."""
    start = time.monotonic()
    when: dict[str, float] = {}
    with httpx.Client(timeout=2) as c:
        while len(when) < len(urls) and time.monotonic() - start < deadline_s:
            for name, url in urls.items():
                if name in when:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(url + "/readyz").status_code == 200:
                        when[name] = time.monotonic() - start
            time.sleep(0.1)
    return when


@pytest.mark.e2e
# one master, for the suite's time budget: the seed node, the one every client starts from
# (master-2 was killed too until 2026-12-08: the same promises held; `-k` a victim to try others)
@pytest.mark.parametrize("victim", [0], ids=["master-0"])
def test_a_master_killed_mid_visits_loses_and_doubles_no_push(victim, tmp_path, fcm):
    cluster = EmbeddedRedisCluster(tmp_path / "cluster", replicas=1, node_timeout_ms=2000).start()
    try:
        master = cluster.nodes[victim]
        assert cluster.role_of(master) == "master"
        with stack(master.url, tmp_path, fcm) as urls, \
                httpx.Client(base_url=urls["geo"], timeout=15) as geo, \
                httpx.Client(base_url=urls["recommender"], timeout=15) as rec:
            for store_id, lat, lon in STORES:
                r = geo.put(f"/v1/stores/{store_id}", headers=ADMIN, json={
                    "type": "Feature", "id": store_id, "properties": {"radius_m": 60},
                    "geometry": {"type": "Point", "coordinates": [lon, lat]}})
                assert r.status_code in (200, 201), r.text
            offer = {"title": "10% off", "item_ids": ["i1"], "category": "CANDLE", "price": 10, "currency": "EUR",
                     "valid_from": time.time() - 3600, "valid_to": time.time() + 86_400}
            assert rec.put("/v1/offers/fo-o1", headers=ADMIN, json=offer).status_code in (200, 201)
            phones = [Phone(n, geo) for n in range(PHONES)]
            for p in phones:
                p.register()
            replicate_everything(cluster)

            # the first half enter their stores; then the master dies while they dwell and the
            # second half arrive
            deadline = time.monotonic() + 30
            while not all(p.entered for p in phones[:PHONES // 2]):
                assert time.monotonic() < deadline, "the first phones did not enter"
                for p in phones[:PHONES // 2]:
                    p.report()
                time.sleep(0.2)
            # phones keep reporting through the failover, from their own thread
            done = threading.Event()

            def dwell() -> None:
                while not done.is_set():
                    for p in phones:
                        p.report()
                    time.sleep(0.3)

            reporter = threading.Thread(target=dwell, daemon=True)
            reporter.start()
            time.sleep(0.5)
            cluster.kill(master)
            killed_at = time.monotonic()
            promoted_after = cluster.wait_healthy(30)
            recovery = ready_again(urls, RECOVERY_S + 5)

            def pushed() -> dict[str, list]:
                out: dict[str, list] = {}
                for received in fcm.received:
                    token = (received.json or {}).get("message", {}).get("token", "")
                    if token.startswith("fcm-fo-c"):
                        out.setdefault(token[4:], []).append(received)
                return out

            deadline = time.monotonic() + 90
            while len(pushed()) < PHONES and time.monotonic() < deadline:
                time.sleep(0.3)
            time.sleep(3)  # would a second push for any phone follow? (it must not)
            done.set()
            reporter.join(30)
            got = pushed()
            report = (f"killed master {victim} (port {master.port}); promoted {promoted_after:.1f} s after the kill; "
                      f"ready again (s after promotion): { {k: round(v, 1) for k, v in recovery.items()} }; "
                      f"pushes {len(got)}/{PHONES}; refused fix requests "
                      f"{sum(p.failed_requests for p in phones)}; {time.monotonic() - killed_at:.0f} s in all")
            print(report)
            assert set(recovery) == set(urls), f"not ready again: {set(urls) - set(recovery)}; {report}"
            assert max(recovery.values()) <= RECOVERY_S, report
            missing = {p.customer for p in phones} - set(got)
            assert not missing, f"phones without their push: {sorted(missing)}; {report}"
            doubled = {c: len(v) for c, v in got.items() if len(v) > 1}
            assert not doubled, f"phones pushed more than once: {doubled}; {report}"
            with httpx.Client(timeout=2) as c:  # nothing was restarted: the same processes answer
                for name, url in urls.items():
                    assert c.get(url + "/healthz").status_code == 200, name
    finally:
        cluster.stop()
