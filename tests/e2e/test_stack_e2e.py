"""The whole path, every service a process of its own as a container runs it: phones report
fixes to the geo service → visit events → the recommender worker's decisions → push jobs → the
push gateway → a local FCM-like provider. On one Redis with one replica of each service, with
two replicas of each, and on a 3-master Redis Cluster: every visit ends as exactly one push,
none lost, none twice, and a store written through one geo replica is seen by the other."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from redis.cluster import RedisCluster

from vicino.services.kernel.contracts.decisions import decisions_stream_key
from vicino.services.kernel.contracts.geofence_events import events_stream_key
from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET
from tests.support import ROOT, fix_until_enter, free_port, served_service, stop_process, wait_until
from tests.push_provider_fixtures import fcm, fcm_server, material  # noqa: F401  (fixtures)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CUSTOMERS = 12
# stores 300 m apart along a street of Torino
STORES = [(f"e2e-store-{i}", 45.07, 7.68 + 0.004 * i) for i in range(4)]


@contextlib.contextmanager
def worker_process(redis_url: str, log_dir: Path, name: str, env: dict):
    """`vicino serve recommender-worker`, its health edge on a free port."""
    full = {**os.environ, "VICINO_REDIS_URL": redis_url, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN,
            "VICINO_TOKEN_SECRET": TOKEN_SECRET, "VICINO_LOG_LEVEL": "WARNING",
            "VICINO_WORKER_PORT": str(free_port()), **env}
    log = open(log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "vicino.services.cli", "serve", "recommender-worker"], cwd=ROOT, env=full,
                            stdout=log, stderr=log, start_new_session=True)
    try:
        time.sleep(0.5)
        assert proc.poll() is None, (log_dir / f"{name}.log").read_text()[-3000:]
        yield proc
    finally:
        stop_process(proc)
        log.close()


@contextlib.contextmanager
def stack(redis_url: str, tmp_path: Path, fcm_server, replicas: int = 1):
    """Every service `replicas` times; yields the geo and recommender URLs of each replica."""
    decide = {"VICINO_DECIDE_ON": "enter", "VICINO_QUIET_HOURS": "", "VICINO_HOLDOUT_PERCENT": "0",
              "VICINO_HISTORY_DIR": str(tmp_path / "history"), "VICINO_MODEL_DIR": str(tmp_path / "models")}
    with contextlib.ExitStack() as es:
        for i in range(replicas):
            for kind in ("geo", "rec", "worker", "push"):
                (tmp_path / f"{kind}-{i}").mkdir(exist_ok=True)
        geo = [es.enter_context(served_service("geo", redis_url, tmp_path / f"geo-{i}", env={}))
               for i in range(replicas)]
        rec = [es.enter_context(served_service("recommender", redis_url, tmp_path / f"rec-{i}",
                                               env={"VICINO_GEO_URL": geo[i], **decide})) for i in range(replicas)]
        for i in range(replicas):
            es.enter_context(worker_process(redis_url, tmp_path / f"worker-{i}", "worker",
                                            {"VICINO_GEO_URL": geo[i], **decide}))
            es.enter_context(served_service("push", redis_url, tmp_path / f"push-{i}", env={
                "VICINO_GEO_URL": geo[i], "VICINO_RECOMMENDER_URL": rec[i],
                "VICINO_FCM_CREDENTIALS": str(fcm_server.sa.path), "VICINO_FCM_ENDPOINT": fcm_server.url}))
        yield geo, rec


def run_scenario(redis_url: str, geo_urls: list[str], rec_urls: list[str], fcm_server, redis_client) -> None:
    n = len(geo_urls)
    geo = [httpx.Client(base_url=u, timeout=30) for u in geo_urls]
    rec = [httpx.Client(base_url=u, timeout=30) for u in rec_urls]
    try:
        # stores through replica 0 only: the others must learn them from the change log
        for store_id, lat, lon in STORES:
            r = geo[0].put(f"/v1/stores/{store_id}", headers=ADMIN, json={
                "type": "Feature", "id": store_id, "properties": {"radius_m": 60, "name": f"Negozio {store_id}"},
                "geometry": {"type": "Point", "coordinates": [lon, lat]}})
            assert r.status_code in (200, 201), r.text
        offer = {"title": "Candele", "item_ids": ["i1"], "category": "CANDLE", "price": 10, "promo_price": 8.5,
                 "currency": "EUR", "valid_from": time.time() - 3600, "valid_to": time.time() + 86_400}
        assert rec[-1].put("/v1/offers/e2e-o1", headers=ADMIN, json=offer).status_code in (200, 201)
        # the visits become pushes through a campaign in Italian (issue 17)
        r = rec[-1].put("/v1/campaigns/e2e-it", headers=ADMIN, json={
            "name": "Candele in negozio", "status": "active", "trigger": {"on": "enter"},
            "limits": {"holdout_percent": 0},
            "message": {"templates": {"it": {"title": "{offer_title} da {store_name}",
                                             "body": "Solo {price} invece di {regular_price} (-{discount_percent})"}},
                        "default_locale": "it"}})
        assert r.status_code == 201, r.text
        visits = {}
        for c in range(CUSTOMERS):
            g = geo[c % n]  # each customer's requests go to one replica, customers spread over all
            customer, device = f"e2e-c{c}", f"e2e-phone-{c}"
            reg = g.post("/v1/devices", headers=ADMIN, json={"device_id": device, "customer_id": customer,
                                                              "platform": "android", "push_token": f"fcm-{c}",
                                                              "timezone": "Europe/Rome"})
            assert reg.status_code in (200, 201), reg.text
            g.put(f"/v1/customers/{customer}/consent", headers=ADMIN,
                  json={"location": True, "marketing": True, "personalisation": True})
            token = {"Authorization": "Bearer " + reg.json()["token"]}
            store_id, lat, lon = STORES[c % len(STORES)]
            events = fix_until_enter(g, token, device, lat, lon, store_id, timeout_s=20)
            visits[customer] = next(e["visit_id"] for e in events if e["type"] == "enter")
            # more fixes inside: the visit stays one visit, no second decision
            for _ in range(3):
                g.post("/v1/locations", headers=token, json={"device_id": device, "fixes": [
                    {"lat": lat, "lon": lon, "accuracy_m": 5, "ts": time.time()}]})

        def pushed() -> dict:
            out: dict = {}
            for rec_ in fcm_server.received:
                data = (rec_.json or {}).get("message", {}).get("data", {})
                if data.get("visit_id"):
                    out.setdefault(data["visit_id"], []).append(rec_)
            return out

        wait_until(lambda: len(pushed()) >= CUSTOMERS, 60, 0.2, f"{CUSTOMERS} pushes at the provider")
        time.sleep(1.5)  # would a second push for any visit follow? (it must not)
        got = pushed()
        assert set(got) == set(visits.values()), "a visit without its push, or a push for no visit"
        assert all(len(v) == 1 for v in got.values()), "a visit pushed twice"
        tokens = {r[0].json["message"]["token"] for r in got.values()}
        assert tokens == {f"fcm-{c}" for c in range(CUSTOMERS)}
        for r in got.values():
            m = r[0].json["message"]
            assert m["notification"] == {"title": f"Candele da Negozio {m['data']['store_id']}",
                                         "body": "Solo 8,50\xa0€ invece di 10,00\xa0€ (-15%)"}, m
            assert m["data"]["campaign_id"] == "e2e-it"
        # no event lost: one enter per customer in the event streams, one decision per visit
        enters = decided = 0
        for shard in range(16):
            for _, f in redis_client.xrange(events_stream_key(shard)):
                enters += b'"type":"enter"' in f[b"event"]
            decided += redis_client.xlen(decisions_stream_key(shard))
        assert enters == CUSTOMERS and decided == CUSTOMERS
    finally:
        for c in geo + rec:
            c.close()


@pytest.mark.e2e
def test_one_replica_each(redis_url, tmp_path, fcm):
    with stack(redis_url, tmp_path, fcm) as (geo, rec):
        run_scenario(redis_url, geo, rec, fcm, redis_lib.Redis.from_url(redis_url))


@pytest.mark.e2e
def test_two_replicas_each(redis_url, tmp_path, fcm):
    with stack(redis_url, tmp_path, fcm, replicas=2) as (geo, rec):
        run_scenario(redis_url, geo, rec, fcm, redis_lib.Redis.from_url(redis_url))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedRedisCluster(tmp_path_factory.mktemp("e2e-cluster")).start()
    yield c
    c.stop()


@pytest.mark.e2e
def test_on_redis_cluster(cluster, tmp_path, fcm):
    r = RedisCluster.from_url(cluster.url)
    for node in r.get_primaries():
        r.flushall(target_nodes=[node])
    with stack(cluster.url, tmp_path, fcm) as (geo, rec):
        run_scenario(cluster.url, geo, rec, fcm, r)
