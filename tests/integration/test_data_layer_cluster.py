"""The data layer (recommender service and its worker) against a real 3-master Redis Cluster,
with the geo service beside it: ingestion over many slots, merges, catalogue, stock, rules,
visits, export to Parquet and erasure all keep each operation's keys in one slot."""
from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from vicino.services.recommender.app import create_app
from vicino.services.recommender.wiring import build_decision_consumer
from vicino.services.kernel.clock import SystemClock
from vicino.services.recommender.wiring import build_ranker, build_visit_consumer
from tests.conftest import ADMIN_TOKEN, make_rec_settings
from tests.support import fix_until_enter, served_geo

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


def test_the_data_layer_runs_on_redis_cluster(cluster, tmp_path):
    from redis.cluster import RedisCluster

    from vicino.services.runtime.redis_client import open_async
    from vicino.services.kernel.contracts.interaction_log import read_interactions
    from vicino.services.recommender.workers.exporter import Exporter

    with served_geo(cluster.url, tmp_path) as geo_url:
        import httpx

        geo = httpx.Client(base_url=geo_url, headers=ADMIN, timeout=30)
        settings = make_rec_settings(cluster.url, geo_url=geo_url, history_dir=str(tmp_path / "history"),
                                     model_dir=str(tmp_path / "models"), decide_on="enter", quiet_hours="",
                                     holdout_percent=0)
        with TestClient(create_app(settings), raise_server_exceptions=False) as rec:
            assert rec.get("/readyz").status_code == 200
            now = time.time()
            items = [{"event_id": f"k{i}", "customer_id": f"kc-{i % 40}", "channel": "web", "type": "purchase",
                      "item_id": f"sku-{i % 9}", "quantity": 1, "value": 3.0, "ts": now - 500 + i} for i in range(400)]
            r = rec.post("/v1/interactions", headers=ADMIN, json=items)
            assert r.status_code == 200 and r.json()["accepted"] == 400, r.text
            assert rec.post("/v1/interactions", headers=ADMIN, json=items).json()["duplicates"] == 400

            # a merge across slots, with consent through geo
            phone = geo.post("/v1/devices", json={"device_id": "kphone", "customer_id": "kc-7", "platform": "ios",
                                                  "push_token": "ab" * 32})
            assert phone.status_code == 201
            assert geo.put("/v1/customers/kc-7/consent", json={"location": True, "marketing": True,
                                                              "personalisation": False}).status_code == 200
            r = rec.post("/v1/customers/kc-3/identifiers", headers=ADMIN, json={"kind": "device", "value": "kphone", "verified": True})
            assert r.status_code == 201 and r.json() == {"customer_id": "kc-3", "identifier": "device:kphone",
                                                         "created": True, "merged": ["kc-7"]}, r.text
            profile = rec.get("/v1/customers/kc-7", headers=ADMIN).json()
            assert profile["customer_id"] == "kc-3" and profile["history"]["hot_interactions"] == 20
            assert profile["consent"]["personalisation"] is False

            # catalogue, stock and rules on their own slots; the store comes from geo
            assert geo.put("/v1/stores/kshop", json={"type": "Feature", "id": "kshop", "properties": {
                "radius_m": 60, "brand": "Acme"}, "geometry": {"type": "Point", "coordinates": [9.19, 45.46]}}
                           ).status_code == 201
            offer = {"title": "Mugs", "item_ids": ["sku-1"], "category": "MUG", "price": 5, "promo_price": 4,
                     "currency": "EUR", "valid_from": now - 60, "valid_to": now + 3600, "min_stock": 2}
            assert rec.put("/v1/offers/k-offer", headers=ADMIN, json=offer).status_code == 201
            assert rec.put("/v1/stores/kshop/inventory", headers=ADMIN, json={"sku-1": 1}).status_code == 200
            assert rec.patch("/v1/stores/kshop/inventory", headers=ADMIN, json={"sku-1": 2}).status_code == 200
            assert rec.put("/v1/rules", headers=ADMIN, json={"paused_brands": []}).status_code == 200
            at_store = rec.get("/v1/stores/kshop/offers", headers=ADMIN).json()
            assert [o["offer_id"] for o in at_store["eligible"]] == ["k-offer"], at_store

            # visits: a fix inside the store, consumed by the worker
            token = {"Authorization": "Bearer " + phone.json()["token"]}
            fix_until_enter(geo, token, "kphone", 45.46, 9.19, "kshop")

            async def work():
                redis = open_async(cluster.url)
                try:
                    handled = await build_visit_consumer(settings, redis, "k").run_once()
                    decided = await build_decision_consumer(settings, redis, "k", build_ranker(settings, redis, SystemClock())).run_once()
                    exported = await Exporter(redis, settings).run_once()
                    return handled, decided, exported
                finally:
                    await redis.aclose()

            handled, decided, exported = asyncio.run(work())
            assert handled >= 1 and decided >= 1
            from vicino.services.kernel.contracts.interactions import customer_shard
            from vicino.services.kernel.contracts.push_jobs import PushJobV1, push_jobs_stream_key

            rc = RedisCluster.from_url(cluster.url)
            jobs = [PushJobV1.from_stream_fields(f)
                    for _id, f in rc.xrange(push_jobs_stream_key(customer_shard("kc-3", settings.customer_shards)))]
            rc.close()
            assert [(j.data.offer_id, j.data.store_id, j.device_id) for j in jobs] == [("k-offer", "kshop", "kphone")]
            visits = rec.get("/v1/customers/kc-3", headers=ADMIN).json()["last_visits"]
            assert [v["store_id"] for v in visits] == ["kshop"]
            table = read_interactions(settings.history_dir)
            assert sorted(table.column("event_id").to_pylist()) == sorted(f"k{i}" for i in range(400))

            # erasure of the merged person, across their slots and geo's
            r = rec.delete("/v1/customers/kc-7", headers=ADMIN)
            assert r.status_code == 200 and r.json()["erased_customers"] == 2, r.text
        geo.close()

    rc = RedisCluster.from_url(cluster.url)
    try:
        leftovers = []
        for key in rc.scan_iter(match="*", count=1000, target_nodes=RedisCluster.PRIMARIES):
            k = key.decode()
            if any(x in k for x in ("kc-3:", "kc-7:", "kphone", "{cust:kc-3}", "{cust:kc-7}")):
                leftovers.append(k)
        assert not leftovers, leftovers
    finally:
        rc.close()

