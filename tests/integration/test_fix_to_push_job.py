"""The path of issue #4 end to end, all real: a fix at a store in the geo service → an enter
event → the recommender worker's decision with the published model and the real catalogue →
one push job for the visit, with the offer the ranking put first."""
from __future__ import annotations

import asyncio

import redis as redis_lib

from vicino.services.kernel.contracts.decisions import DecisionV1, decisions_stream_key
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.kernel.contracts.push_jobs import PushJobV1, push_jobs_stream_key
from vicino.services.kernel.contracts.stores import STORES_FEATURES
from vicino.services.runtime.redis_client import open_async
from vicino.services.kernel.clock import SystemClock
from vicino.services.recommender.wiring import build_ranker, build_worker_loops
from vicino.services.recommender.wiring import build_decision_consumer
from tests.conftest import ADMIN_TOKEN
from tests.support import fix_until_enter
from tests.integration.test_offers_api import make_version, offer

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
APNS_TOKEN = "5e" * 32  # a 32-byte APNs device token, hex


def test_a_fix_at_a_store_becomes_one_push_job_with_the_best_offer(rec_settings, tmp_path, geo_http):
    from fastapi.testclient import TestClient

    from vicino.services.recommender.app import create_app

    root = tmp_path / "models"
    make_version(root, "v1")
    settings = rec_settings.model_copy(update={"model_dir": str(root), "decide_on": "enter", "quiet_hours": "",
                                               "holdout_percent": 0})
    with TestClient(create_app(settings)) as rec:
        for oid, items in (("o1", ["i1"]), ("o2", ["i2"])):
            assert rec.put(f"/v1/offers/{oid}", headers=ADMIN, json=offer(oid, items)).status_code == 201
    geo_http.put("/v1/stores/shop-j", json={"type": "Feature", "id": "shop-j", "properties": {"radius_m": 80},
                                             "geometry": {"type": "Point", "coordinates": [7.68, 45.07]}})
    reg = geo_http.post("/v1/devices", json={"device_id": "phone-u1", "customer_id": "u1", "platform": "ios",
                                             "push_token": APNS_TOKEN, "timezone": "Europe/Rome"})
    geo_http.put("/v1/customers/u1/consent", json={"location": True, "marketing": True, "personalisation": True})
    token = {"Authorization": "Bearer " + reg.json()["token"]}
    events = fix_until_enter(geo_http, token, "phone-u1", 45.07, 7.68, "shop-j")
    visit = next(e["visit_id"] for e in events if e["store_id"] == "shop-j")

    async def work():
        redis = open_async(settings.redis_url)
        stop = asyncio.Event()
        try:
            loops = build_worker_loops(settings, redis, "test-worker")
            tasks = [asyncio.create_task(loops[name](stop)) for name in ("model", "decisions")]
            sync = redis_lib.Redis.from_url(settings.redis_url)
            key = push_jobs_stream_key(customer_shard("u1", settings.customer_shards))
            for _ in range(100):
                await asyncio.sleep(0.1)
                if sync.xlen(key):
                    break
            await asyncio.sleep(0.3)  # would a second job follow? (it must not)
            stop.set()
            await asyncio.gather(*tasks)
            return sync
        finally:
            await redis.aclose()

    sync = asyncio.run(work())
    shard = customer_shard("u1", settings.customer_shards)
    jobs = [PushJobV1.model_validate_json(f[b"data"]) for _id, f in sync.xrange(push_jobs_stream_key(shard))]
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert (job.data.offer_id, job.data.store_id, job.data.visit_id) == ("o1", "shop-j", visit)
    assert job.push_token == APNS_TOKEN and job.platform == "ios" and job.collapse_key == visit
    assert job.idempotency_key == f"u1:shop-j:{visit}" and job.expires_at > job.created_at
    decisions = [DecisionV1.model_validate_json(f[b"data"]) for _id, f in sync.xrange(decisions_stream_key(shard))]
    assert [(d.outcome, d.offer_id, d.model_version) for d in decisions] == [("send", "o1", "v1")]
    sync.close()


def test_a_store_removed_before_the_decision_gets_no_offer_and_no_dead_letter(rec_settings, tmp_path, geo_http):
    settings = rec_settings.model_copy(update={"model_dir": str(tmp_path / "models"), "decide_on": "enter",
                                               "quiet_hours": "", "holdout_percent": 0})
    geo_http.put("/v1/stores/shop-gone", json={"type": "Feature", "id": "shop-gone", "properties": {"radius_m": 80},
                                                "geometry": {"type": "Point", "coordinates": [12.49, 41.89]}})
    reg = geo_http.post("/v1/devices", json={"device_id": "phone-g", "customer_id": "cg", "platform": "android",
                                             "push_token": "fcm-g"})
    geo_http.put("/v1/customers/cg/consent", json={"location": True, "marketing": True, "personalisation": True})
    token = {"Authorization": "Bearer " + reg.json()["token"]}
    fix_until_enter(geo_http, token, "phone-g", 41.89, 12.49, "shop-gone")
    # the direct delete leaves the enter event in the stream (the geo replica's own exit comes later)
    sync = redis_lib.Redis.from_url(settings.redis_url)
    sync.hdel(STORES_FEATURES, "shop-gone")

    async def work():
        redis = open_async(settings.redis_url)
        try:
            c = build_decision_consumer(settings, redis, "w", build_ranker(settings, redis, SystemClock()))
            await c.run_once()
            return c.dead
        finally:
            await redis.aclose()

    dead = asyncio.run(work())
    shard = customer_shard("cg", settings.customer_shards)
    decisions = [DecisionV1.model_validate_json(f[b"data"]) for _id, f in sync.xrange(decisions_stream_key(shard))]
    assert dead == 0
    assert [(d.store_id, d.outcome, d.reason) for d in decisions if d.store_id == "shop-gone"] == [
        ("shop-gone", "suppress", "no_eligible_offer")]
    sync.close()
