"""Serving offers: a hand-built model artifact (so every expected score is known), the real
catalogue, stock and rules in Redis, the real geo service for consent; hot reload of versions."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.contracts.model_artifact import Blend, Manifest, publish, write_version
from vicino.services.recommender.app import create_app
from tests.conftest import ADMIN_TOKEN
from tests.support import assert_problem, epoch, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = time.time()
K = 2


def make_version(root: Path, version: str, *, user_vec=(1.0, 0.0), popular=("i3", "i2", "i1"),
                 repeat_weight: float = 0.0) -> None:
    """Users u1 (likes dimension 0) and u2 (dimension 1); items i1 (dim 0), i2 (dim 1), i3
    (half of each); item features cat:MUG (dim 0) and price:0-5 / price:5-inf; user feature
    country:Italy (dim 1)."""
    arrays = {
        "user_repr": np.array([user_vec, [0.0, 1.0]], np.float32), "user_bias": np.zeros(2, np.float32),
        "item_repr": np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32),
        "item_bias": np.array([0.0, 0.0, 0.1], np.float32),
        "user_feature_emb": np.array([[0.0, 2.0]], np.float32), "user_feature_bias": np.zeros(1, np.float32),
        "item_feature_emb": np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32),
        "item_feature_bias": np.zeros(3, np.float32),
    }
    manifest = Manifest(version=version, created_at=NOW, data_window={"start": 0, "end": NOW, "rows": 10},
                        settings={"k": K}, metrics={"p@10": 0.5}, user_ids=["u1", "u2"], item_ids=["i1", "i2", "i3"],
                        user_features=["country:Italy"], item_features=["cat:MUG", "price:0-5", "price:5-inf"],
                        popular_items=list(popular), blend=Blend(0.0, 1.0, repeat_weight, 30.0))
    write_version(root, manifest, arrays)
    publish(root, version)


def offer(offer_id: str, items: list[str], **kw) -> dict:
    return {"title": offer_id, "item_ids": items, "category": kw.pop("category", "CANDLE"), "price": 10,
            "currency": "EUR", "valid_from": NOW - 3600, "valid_to": NOW + 86_400, **kw}


@pytest.fixture
def served(rec_settings, tmp_path, geo_http):
    root = tmp_path / "models"
    make_version(root, "v1")
    settings = rec_settings.model_copy(update={"model_dir": str(root), "model_poll_s": 0.1})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for oid, items, kw in (("o1", ["i1"], {}), ("o2", ["i2"], {}), ("o3", ["i3"], {}),
                               ("o-new", ["never-seen"], {"category": "MUG", "promo_price": 4})):
            assert client.put(f"/v1/offers/{oid}", headers=ADMIN, json=offer(oid, items, **kw)).status_code == 201
        for cust in ("u1", "u2", "stranger"):
            geo_http.put(f"/v1/customers/{cust}/consent",
                         json={"location": True, "marketing": True, "personalisation": True})
        yield client, root


def ranked(client, customer, **params) -> dict:
    r = client.get(f"/v1/customers/{customer}/offers", headers=ADMIN, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_known_customer_is_ranked_by_the_model(served):
    client, _ = served
    out = ranked(client, "u1", k=4)
    # u1·i1 = 1, u1·i3 = 0.5 + 0.1, u1·i2 = 0, the unseen offer scores from cat:MUG + price:0-5 = (1.5, 0)·u1
    assert [o["offer_id"] for o in out["offers"]] == ["o-new", "o1", "o3", "o2"]
    assert [o["reason"] for o in out["offers"]] == ["cold_start_features", "model", "model", "model"]
    assert out["offers"][1]["score"] == pytest.approx(1.0) and out["offers"][2]["score"] == pytest.approx(0.6)
    assert out["model_version"] == "v1" and out["offers"][0]["price"] == 4 and out["offers"][0]["regular_price"] == 10
    assert abs(epoch(out["generated_at"]) - time.time()) < 60
    assert all(epoch(o["valid_to"]) == pytest.approx(NOW + 86_400, abs=1e-3) for o in out["offers"])
    assert [o["offer_id"] for o in ranked(client, "u2", k=4)["offers"]][0] == "o2"


def test_the_same_ranking_on_every_channel(served):
    client, _ = served
    orders = {ch: [(o["offer_id"], o["score"], o["price"]) for o in ranked(client, "u1", k=4, channel=ch)["offers"]]
              for ch in ("web", "app", "store", "email", "call_center", "social", "push")}
    assert len({tuple(v) for v in orders.values()}) == 1


def test_an_unknown_customer_is_scored_from_features(served, rec_client):
    client, _ = served
    client.post("/v1/interactions", headers=ADMIN, json=[{
        "event_id": "x1", "customer_id": "stranger", "channel": "web", "type": "view", "item_id": "zz",
        "country": "Italy", "ts": NOW - 10}])
    out = ranked(client, "stranger", k=4)
    assert out["offers"][0]["offer_id"] == "o2"  # country:Italy points at dimension 1
    assert {o["reason"] for o in out["offers"]} == {"cold_start_features"}
    nobody = ranked(client, "nobody-at-all", k=4)  # no consent record: popularity, not an error
    assert [o["reason"] for o in nobody["offers"]] == ["popular_fallback"] * 4


def test_without_personalisation_consent_popularity_ranks(served, geo_http):
    client, _ = served
    geo_http.put("/v1/customers/u1/consent", json={"location": True, "marketing": True, "personalisation": False})
    out = ranked(client, "u1", k=4)
    assert [o["offer_id"] for o in out["offers"][:3]] == ["o3", "o2", "o1"]  # popular_items order
    assert {o["reason"] for o in out["offers"]} == {"popular_fallback"}


def test_redeemed_offers_and_store_rules_exclude(served, geo_http):
    client, _ = served
    client.post("/v1/interactions", headers=ADMIN, json=[{
        "event_id": "r1", "customer_id": "u1", "channel": "store", "type": "offer_redeem", "offer_id": "o1",
        "ts": NOW - 10}])
    assert "o1" not in [o["offer_id"] for o in ranked(client, "u1", k=4)["offers"]]
    geo_http.put("/v1/stores/st-1", json={"type": "Feature", "id": "st-1", "properties": {"radius_m": 50},
                                          "geometry": {"type": "Point", "coordinates": [9.0, 45.0]}})
    client.put("/v1/offers/o3", headers=ADMIN, json=offer("o3", ["i3"], min_stock=5))
    client.put("/v1/stores/st-1/inventory", headers=ADMIN, json={"i3": 2})
    at_store = [o["offer_id"] for o in ranked(client, "u1", k=4, store_id="st-1")["offers"]]
    assert "o3" not in at_store and "o2" in at_store
    client.patch("/v1/stores/st-1/inventory", headers=ADMIN, json={"i3": 3})
    assert "o3" in [o["offer_id"] for o in ranked(client, "u1", k=4, store_id="st-1")["offers"]]


def test_bad_requests(served):
    client, _ = served
    assert_problem(client.get("/v1/customers/u1/offers", headers=ADMIN, params={"store_id": "nope"}), 404, "nope")
    for k in (0, 101, "x"):
        assert_problem(client.get("/v1/customers/u1/offers", headers=ADMIN, params={"k": k}), 422, "k")
    assert_problem(client.get("/v1/customers/u1/offers", headers=ADMIN, params={"channel": "fax"}), 422, "channel")
    assert_problem(client.get("/v1/customers/u1/offers"), 401)


def test_a_new_version_is_picked_up_and_a_broken_one_is_not(served):
    client, root = served
    assert client.get("/v1/model", headers=ADMIN).json()["serving"] == "v1"
    make_version(root, "v2", user_vec=(0.0, 1.0))  # u1 now likes dimension 1
    wait_until(lambda: client.get("/v1/model", headers=ADMIN).json()["serving"] == "v2", 10, what="v2 serving")
    assert ranked(client, "u1", k=4)["offers"][0]["offer_id"] == "o2"
    # a truncated artifact: v2 keeps serving, readiness says why, the logs too
    make_version(root, "v3")
    (root / "v3" / "arrays.npz").write_bytes((root / "v3" / "arrays.npz").read_bytes()[:100])
    wait_until(lambda: client.get("/v1/model", headers=ADMIN).json()["failed_version"] == "v3", 10, what="v3 refused")
    info = client.get("/v1/model", headers=ADMIN).json()
    assert info["serving"] == "v2" and "cannot be read" in info["failure"]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "v3 failed to load" in ready.json()["checks"]["model"]
    assert ranked(client, "u1", k=4)["model_version"] == "v2"
    # ids that do not match the catalogue: offers without embeddings are scored from features
    assert any(o["offer_id"] == "o-new" for o in ranked(client, "u1", k=4)["offers"])


def test_the_customers_own_purchases_lift_what_they_rebuy(rec_settings, tmp_path, geo_http):
    root = tmp_path / "models"
    make_version(root, "v1", repeat_weight=5.0)
    settings = rec_settings.model_copy(update={"model_dir": str(root)})
    geo_http.put("/v1/customers/u2/consent", json={"location": True, "marketing": True, "personalisation": True})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for oid, items in (("o1", ["i1"]), ("o2", ["i2"])):
            client.put(f"/v1/offers/{oid}", headers=ADMIN, json=offer(oid, items))
        before = ranked(client, "u2")["offers"]
        assert [o["offer_id"] for o in before] == ["o2", "o1"]
        client.post("/v1/interactions", headers=ADMIN, json=[{
            "event_id": "p1", "customer_id": "u2", "channel": "store", "type": "purchase", "item_id": "i1",
            "quantity": 1, "ts": time.time() - 86_400}])
        after = ranked(client, "u2")["offers"]
        # 0 + 5 × 2^(−1/30) for i1 against 1 for i2
        assert [o["offer_id"] for o in after] == ["o1", "o2"]
        assert after[0]["score"] == pytest.approx(5 * 2 ** (-1 / 30), rel=1e-4)


def test_the_kept_eligibility_verdicts_follow_time_stock_and_rules(rec_settings, geo_http):
    """The ranking keeps a store's verdicts between requests (use_cases/ranking.py); they must
    change the moment an offer's validity ends, the stock moves or the rules change."""
    import asyncio

    from vicino.services.kernel.clock import FixedClock
    from vicino.services.recommender.adapters.catalog_repository import CatalogRepository
    from vicino.services.recommender.domain.offers import Offer
    from vicino.services.recommender.wiring import build_ranker
    from vicino.services.runtime.redis_client import open_async
    from tests.conftest import circle_store

    assert geo_http.put("/v1/stores/kv-1", json=circle_store("kv-1", 45.46, 9.19)).status_code in (200, 201)
    now = 1_780_480_800.0
    clock = FixedClock(now)
    offers = [Offer.model_validate({"offer_id": oid, "title": oid, "item_ids": [item], "category": "C", "price": 2.0,
                                    "currency": "EUR", "valid_from": now - 3600, "valid_to": end, "min_stock": least,
                                    "updated_at": now})
              for oid, item, end, least in (("o-short", "a", now + 60, None), ("o-stock", "b", now + 3600, 2),
                                            ("o-long", "c", now + 3600, None))]

    async def scenario() -> list[list[str]]:
        redis = open_async(rec_settings.redis_url)
        try:
            repo = CatalogRepository(redis)
            await repo.upsert_offers([(o.offer_id, o.model_dump_json().encode()) for o in offers])
            ranker = build_ranker(rec_settings, redis, clock)

            async def ids() -> list[str]:
                r = await ranker.rank("kv-cust", personalisation=False, store_id="kv-1", channel="app", k=10)
                return sorted(o.offer_id for o in r.offers)
            seen = [await ids(), await ids()]              # the second from the kept verdicts
            await repo.replace_stock("kv-1", {"b": 5})
            seen.append(await ids())                       # the stock moved
            clock.advance(60)
            seen.append(await ids())                       # o-short's validity ended, to the second
            await repo.put_rules(b'{"paused_store_ids": ["kv-1"]}', None, clock.now())
            seen.append(await ids())                       # the rules paused the store
            return seen
        finally:
            await redis.aclose()

    assert asyncio.run(scenario()) == [["o-long", "o-short"], ["o-long", "o-short"],
                                       ["o-long", "o-short", "o-stock"], ["o-long", "o-stock"], []]
