"""NaN, ±Infinity and out-of-range numbers in every numeric and time field a client sends are a
clear 4xx (or an item's rejection with its reason), never a 500, and nothing of them is written
(issue #15, "Inputs that still give 500": `"ts": "NaN"` in POST /v1/interactions gave a 500)."""
from __future__ import annotations

import time

import pytest

from tests.conftest import circle_store, fix, register
from tests.support import redis_dump

BAD = ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "-1e400"]


def _no_server_error(r, where: str) -> None:
    assert r.status_code < 500, f"{where}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith(("application/json", "application/problem+json")), where


@pytest.mark.parametrize("bad", BAD)
def test_interaction_numbers(rec_client, admin, redis_sync, bad):
    base = {"event_id": "e1", "customer_id": "c1", "channel": "till", "type": "purchase", "item_id": "i1",
            "quantity": 1, "value": 5, "currency": "EUR", "ts": time.time() - 60}
    before = redis_dump(redis_sync)
    for field in ("ts", "quantity", "value"):
        r = rec_client.post("/v1/interactions", headers=admin, json=[{**base, field: bad}])
        _no_server_error(r, f"interactions {field}={bad}")
        body = r.json()
        assert body["accepted"] == 0 and body["rejected"][0]["reason"] in ("invalid", "ts_in_future"), body
    assert redis_dump(redis_sync) == before


@pytest.mark.parametrize("bad", BAD)
def test_offer_stock_rules_and_kpi_numbers(rec_client, admin, bad):
    now = time.time()
    offer = {"title": "t", "item_ids": ["i1"], "category": "C", "price": 10, "currency": "EUR",
             "valid_from": now - 60, "valid_to": now + 3600}
    for field in ("price", "promo_price", "valid_from", "valid_to", "priority", "min_stock"):
        r = rec_client.put("/v1/offers/o1", headers=admin, json={**offer, field: bad})
        _no_server_error(r, f"offer {field}={bad}")
        assert r.status_code == 422, (field, r.text)
    r = rec_client.post("/v1/offers", headers=admin, json=[{**offer, "offer_id": "o2", "price": bad}])
    _no_server_error(r, "bulk offers")
    for method in ("put", "patch"):
        r = rec_client.request(method.upper(), "/v1/stores/s1/inventory", headers=admin, json={"i1": bad})
        _no_server_error(r, f"inventory {method}")
        assert r.status_code in (404, 422), r.text
    r = rec_client.put("/v1/rules", headers=admin, json={"low_stock_threshold": bad})
    _no_server_error(r, "rules")
    for q in ({"from": bad}, {"to": bad}, {"window_h": bad}):
        _no_server_error(rec_client.get("/v1/kpis", headers=admin, params=q), f"kpis {q}")
        assert rec_client.get("/v1/kpis", headers=admin, params=q).status_code == 422, q
    _no_server_error(rec_client.get("/v1/customers/c1/offers", headers=admin, params={"k": bad}), "offers k")


@pytest.mark.parametrize("bad", BAD)
def test_geo_numbers(client, admin, redis_sync, bad):
    assert client.put("/v1/stores/s1", headers=admin, json=circle_store("s1", 45.0, 9.0, 50)).status_code == 201
    dev = register(client)
    before = redis_dump(redis_sync)
    for field in ("lat", "lon", "accuracy_m", "ts", "speed_mps"):
        f = {**fix(45.0, 9.0, time.time() - 5), field: bad}
        r = client.post("/v1/locations", headers=dev, json={"device_id": "dev-1", "fixes": [f]})
        _no_server_error(r, f"locations {field}={bad}")
        assert r.status_code == 422, (field, r.text)
    for field in ("radius_m", "dwell_s"):
        store = circle_store("s2", 45.0, 9.0, 50)
        store["properties"][field] = bad
        r = client.put("/v1/stores/s2", headers=admin, json=store)
        _no_server_error(r, f"store {field}={bad}")
        assert r.status_code == 422, (field, r.text)
        r = client.post("/v1/stores", headers=admin, json={"type": "FeatureCollection", "features": [store]})
        _no_server_error(r, f"bulk store {field}={bad}")
        assert r.json()["created"] == 0, r.text
    for q in ({"lat": bad, "lon": 9, "radius_m": 100}, {"lat": 45, "lon": bad, "radius_m": 100},
              {"lat": 45, "lon": 9, "radius_m": bad}, {"lat": 45, "lon": 9, "radius_m": 100, "limit": bad}):
        r = client.get("/v1/stores", headers=admin, params=q)
        _no_server_error(r, f"stores {q}")
        assert r.status_code == 422, (q, r.text)
    assert redis_dump(redis_sync) == before


def test_an_id_with_a_final_newline_is_refused_everywhere(client, admin):
    store = circle_store("s1", 45.0, 9.0, 50)
    store["id"] = "s1\n"
    r = client.post("/v1/stores", headers=admin, json={"type": "FeatureCollection", "features": [store]})
    assert r.json()["created"] == 0 and "s1\\n" in r.json()["rejected"][0]["reason"], r.text
    r = client.post("/v1/devices", headers=admin, json={"device_id": "d1\n", "customer_id": "c1", "platform": "ios",
                                                         "push_token": "ab" * 32, "timezone": "Europe/Rome"})
    assert r.status_code == 422, r.text
