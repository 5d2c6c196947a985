"""The recommender's catalogue API on a real Redis, with the real geo service owning the stores:
offers (one price on every channel), bulk import, store stock (atomic deltas), campaign rules
(revisions and If-Match), the offers a store may show, and every bad input: a 4xx problem+json
that leaves every Redis key exactly as it was."""
from __future__ import annotations

import contextlib
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.contracts.interactions import CHANNELS
from vicino.services.recommender.adapters.catalog_repository import OFFERS, OFFERS_CHANGES, OFFERS_SEQ, RULES, stock_key
from vicino.services.recommender.app import create_app as create_recommender
from vicino.services.recommender.use_cases.catalog import MAX_BULK_OFFERS
from tests.conftest import circle_store

from tests.support import assert_problem, epoch, redis_dump

ROME = ZoneInfo("Europe/Rome")
DAY = 86_400.0
MONDAY_10 = datetime(2030, 6, 3, 10, 0, tzinfo=ROME).timestamp()   # a Monday, 10:00 in Rome
SUNDAY_10 = datetime(2030, 6, 2, 10, 0, tzinfo=ROME).timestamp()
JSON = {"content-type": "application/json"}


def offer(offer_id: str = "o1", **kw) -> dict:
    base = {"offer_id": offer_id, "title": "White hanging heart T-light holder", "body": "Now 2.29",
            "item_ids": ["85123A"], "category": "T-LIGHT HOLDER", "price": 2.55, "promo_price": 2.29,
            "currency": "GBP", "valid_from": MONDAY_10 - 7 * DAY, "valid_to": MONDAY_10 + 7 * DAY}
    return {**base, **kw}


@pytest.fixture
def unchanged(redis_sync):
    """`with unchanged(): ...` asserts that no Redis key was added, removed or altered."""
    @contextlib.contextmanager
    def check():
        before = redis_dump(redis_sync)
        yield
        after = redis_dump(redis_sync)
        assert after.keys() == before.keys(), f"keys added {after.keys() - before.keys()}, removed {before.keys() - after.keys()}"
        for k in before:
            assert after[k] == before[k], f"{k!r} changed"
    return check


@pytest.fixture
def stores(geo_http):
    """Three stores of the real geo service: Acme (Mon-Sat 9-20, Rome), Acme in Tokyo, and Bravo
    (no hours known)."""
    for feature in (circle_store("s1", 45.0, 9.0, brand="Acme", opening_hours="Mo-Sa 09:00-20:00",
                                 timezone="Europe/Rome"),
                    circle_store("s2", 35.68, 139.76, brand="ACME", opening_hours="Mo-Su 09:00-18:00",
                                 timezone="Asia/Tokyo"),
                    circle_store("s3", 45.1, 9.1, brand="Bravo")):
        r = geo_http.put(f"/v1/stores/{feature['id']}", json=feature)
        assert r.status_code in (200, 201), r.text
    return ["s1", "s2", "s3"]


@pytest.fixture
def device(geo_http) -> dict:
    """Auth headers of a phone registered with the geo service."""
    r = geo_http.post("/v1/devices", json={"device_id": "dev-1", "customer_id": "cust-1", "platform": "android",
                                           "push_token": "tok-dev-1"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def put(client, admin, o: dict, status: int = 201) -> dict:
    r = client.put(f"/v1/offers/{o['offer_id']}", headers=admin, json=o)
    assert r.status_code == status, r.text
    return r.json()


# offers ----------------------------------------------------------------------------------------------

def test_put_get_replace_delete(rec_client, admin, redis_sync):
    created = put(rec_client, admin, offer(channels=["web", "app", "web"]))
    assert created["canonical_price"] == 2.29 and created["channels"] == ["web", "app"]
    assert created["fulfilment"] == "in_store" and created["store_ids"] is None
    assert time.time() - 60 < epoch(created["updated_at"]) <= time.time()
    stored = orjson.loads(redis_sync.hget(OFFERS, "o1"))
    assert stored["price"] == 2.55 and stored["promo_price"] == 2.29 and "canonical_price" not in stored

    r = rec_client.get("/v1/offers/o1", headers=admin)
    assert r.status_code == 200 and r.json() == created

    # a record read back can be sent again as it is (its read-only fields are dropped)
    replaced = put(rec_client, admin, {**r.json(), "promo_price": None, "fulfilment": "click_and_collect"}, 200)
    assert replaced["canonical_price"] == 2.55 and replaced["fulfilment"] == "click_and_collect"
    assert int(redis_sync.get(OFFERS_SEQ)) == 2
    assert [f[b"op"] for _, f in redis_sync.xrange(OFFERS_CHANGES)] == [b"upsert", b"upsert"]

    assert rec_client.delete("/v1/offers/o1", headers=admin).status_code == 204
    assert_problem(rec_client.get("/v1/offers/o1", headers=admin), 404, "o1")
    assert_problem(rec_client.delete("/v1/offers/o1", headers=admin), 404, "o1")
    assert not redis_sync.hexists(OFFERS, "o1")
    assert [f[b"op"] for _, f in redis_sync.xrange(OFFERS_CHANGES)][-1] == b"delete"


def test_one_price_on_every_channel(rec_client, admin, device):
    put(rec_client, admin, offer(channels=["store", "app"], price=19.99, promo_price=15.99))
    seen = {}
    for channel in CHANNELS:
        r = rec_client.get("/v1/offers/o1", params={"channel": channel}, headers=device)
        assert r.status_code == 200, r.text
        body = r.json()
        seen[channel] = (body["price"], body["promo_price"], body["canonical_price"], body["currency"])
        assert body["available_on_channel"] is (channel in ("store", "app")), channel
    assert len(CHANNELS) == 7 and set(seen.values()) == {(19.99, 15.99, 15.99, "GBP")}
    assert_problem(rec_client.get("/v1/offers/o1", params={"channel": "fax"}, headers=device), 422, "channel")


def test_who_may_do_what(rec_client, admin, device):
    put(rec_client, admin, offer())
    assert rec_client.get("/v1/offers/o1", headers=device).status_code == 200
    assert_problem(rec_client.get("/v1/offers/o1"), 401)
    assert_problem(rec_client.get("/v1/offers/o1", headers={"Authorization": "Bearer nope"}), 401)
    assert_problem(rec_client.put("/v1/offers/o2", headers=device, json=offer("o2")), 403, "admin")
    assert_problem(rec_client.post("/v1/offers", headers=device, json=[offer("o2")]), 403, "admin")
    assert_problem(rec_client.delete("/v1/offers/o1", headers=device), 403, "admin")
    assert_problem(rec_client.get("/v1/offers", headers=device), 403, "admin")
    assert_problem(rec_client.get("/v1/rules", headers=device), 403, "admin")


def test_list_filters_and_pages(rec_client, admin):
    put(rec_client, admin, offer("a-all"))
    put(rec_client, admin, offer("b-s1", store_ids=["s1"]))
    put(rec_client, admin, offer("c-web", channels=["web"]))
    put(rec_client, admin, offer("d-later", valid_from=MONDAY_10 + 30 * DAY, valid_to=MONDAY_10 + 40 * DAY))

    def ids(**params):
        r = rec_client.get("/v1/offers", params=params, headers=admin)
        assert r.status_code == 200, r.text
        return [o["offer_id"] for o in r.json()["offers"]], r.json()["next_after"]

    assert ids() == (["a-all", "b-s1", "c-web", "d-later"], None)
    assert ids(store_id="s2")[0] == ["a-all", "c-web", "d-later"]
    assert ids(channel="store")[0] == ["a-all", "b-s1", "d-later"]
    assert ids(active_at=MONDAY_10)[0] == ["a-all", "b-s1", "c-web"]
    assert ids(active_at="2030-07-05T12:00:00+02:00")[0] == ["d-later"]
    assert ids(limit=2) == (["a-all", "b-s1"], "b-s1")
    assert ids(limit=2, after="b-s1") == (["c-web", "d-later"], None)
    assert ids(limit=1, after="a-all", channel="store") == (["b-s1"], "b-s1")
    assert_problem(rec_client.get("/v1/offers", params={"active_at": "yesterday"}, headers=admin), 422, "active_at")
    assert_problem(rec_client.get("/v1/offers", params={"limit": 0}, headers=admin), 422, "limit")


def test_a_replica_sees_writes_made_through_another(rec_client, rec_settings, admin):
    """Each replica caches the catalogue; the change counter tells it when to reload."""
    with TestClient(create_recommender(rec_settings), raise_server_exceptions=False) as other:
        put(rec_client, admin, offer("o1"))
        assert other.get("/v1/offers/o1", headers=admin).json()["promo_price"] == 2.29
        put(rec_client, admin, offer("o1", promo_price=1.99), 200)
        assert other.get("/v1/offers/o1", headers=admin).json()["promo_price"] == 1.99
        assert rec_client.delete("/v1/offers/o1", headers=admin).status_code == 204
        assert other.get("/v1/offers/o1", headers=admin).status_code == 404


# bulk ------------------------------------------------------------------------------------------------

def test_bulk_stores_the_valid_and_reports_the_invalid(rec_client, admin, redis_sync):
    put(rec_client, admin, offer("exists"))
    items = [offer("new-1"), offer("bad-price", price=0), offer("exists", title="Renamed"),
             "not an object", offer("bad-window", valid_to=MONDAY_10 - 30 * DAY), offer("new-1", priority=3),
             {k: v for k, v in offer("no-title").items() if k != "title"}, offer("bad-channel", channels=["fax"])]
    r = rec_client.post("/v1/offers", headers=admin, json={"offers": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["updated"]) == (1, 1)
    rejected = {x["index"]: (x["offer_id"], x["reason"]) for x in body["rejected"]}
    assert sorted(rejected) == [1, 3, 4, 6, 7]
    assert rejected[1][0] == "bad-price" and "price" in rejected[1][1]
    assert rejected[3] == (None, "expected an offer object")
    assert "valid_to" in rejected[4][1] and "title" in rejected[6][1] and "channels" in rejected[7][1]
    assert body["warnings"] == [{"index": 5, "offer_id": "new-1", "warning": "duplicate offer_id in the batch; "
                                 "the last one wins"}]
    assert sorted(k.decode() for k in redis_sync.hkeys(OFFERS)) == ["exists", "new-1"]
    assert orjson.loads(redis_sync.hget(OFFERS, "new-1"))["priority"] == 3
    assert orjson.loads(redis_sync.hget(OFFERS, "exists"))["title"] == "Renamed"
    # a bare JSON array works too
    r = rec_client.post("/v1/offers", headers=admin, json=[offer("new-2")])
    assert r.status_code == 200 and r.json()["created"] == 1


def test_bulk_over_the_limit_is_refused_whole(rec_client, admin, unchanged):
    items = [offer(f"o{i}") for i in range(MAX_BULK_OFFERS + 1)]
    with unchanged():
        assert_problem(rec_client.post("/v1/offers", headers=admin, json=items), 413, str(MAX_BULK_OFFERS))


def test_bulk_of_the_maximum_size_is_accepted(rec_client, admin, redis_sync):
    items = [offer(f"o{i:05d}", item_ids=[f"sku-{i}"]) for i in range(MAX_BULK_OFFERS)]
    r = rec_client.post("/v1/offers", headers=admin, json=items)
    assert r.status_code == 200 and r.json()["created"] == MAX_BULK_OFFERS, r.text[:500]
    assert redis_sync.hlen(OFFERS) == MAX_BULK_OFFERS
    page = rec_client.get("/v1/offers", params={"limit": 1000, "after": "o00999"}, headers=admin).json()
    assert page["offers"][0]["offer_id"] == "o01000" and page["next_after"] == "o01999"


# bad offers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,words", [
    ({"channels": ["web", "fax"]}, ["channels[1]"]),
    ({"valid_to": MONDAY_10 - 30 * DAY}, ["valid_to", "after valid_from"]),
    ({"valid_from": "2030-06-01T00:00:00"}, ["valid_from", "UTC offset"]),
    ({"price": 0}, ["price", "greater than 0"]),
    ({"price": -3}, ["price"]),
    ({"price": "2.55"}, ["price", "valid number"]),
    ({"price": True}, ["price", "valid number"]),
    ({"promo_price": 3.0}, ["promo_price", "above price"]),
    ({"currency": "pounds"}, ["currency"]),
    ({"item_ids": []}, ["item_ids"]),
    ({"store_ids": []}, ["store_ids"]),
    ({"fulfilment": "drone"}, ["fulfilment"]),
    ({"min_stock": -1}, ["min_stock"]),
    ({"priority": "high"}, ["priority"]),
    ({"colour": "red"}, ["colour", "extra"]),
    ({"offer_id": "other"}, ["does not match"]),
])
def test_bad_offers_are_refused(rec_client, admin, unchanged, change, words):
    put(rec_client, admin, offer("o1"))
    with unchanged():
        assert_problem(rec_client.put("/v1/offers/o1", headers=admin, json={**offer("o1"), **change}), 422, *words)


def test_bad_bodies_and_ids(rec_client, admin, unchanged):
    with unchanged():
        assert_problem(rec_client.put("/v1/offers/o1", headers={**admin, "content-type": "text/csv"},
                                      content=b"offer_id,title"), 415, "text/csv")
        assert_problem(rec_client.put("/v1/offers/o1", headers={**admin, **JSON}, content=b'{"title": '), 422,
                       "not valid JSON")
        assert_problem(rec_client.put("/v1/offers/o1", headers={**admin, **JSON}, content=b""), 422, "empty")
        assert_problem(rec_client.put("/v1/offers/o1", headers=admin, json=[offer()]), 422, "offer object")
        assert_problem(rec_client.put("/v1/offers/bad%20id", headers=admin, json=offer("bad id")), 422, "offer_id")
        assert_problem(rec_client.post("/v1/offers", headers={**admin, **JSON}, content=b"[{"), 422, "not valid JSON")
        assert_problem(rec_client.post("/v1/offers", headers=admin, json={"offer": []}), 422, "array of offers")
        assert_problem(rec_client.post("/v1/offers", headers={**admin, "content-type": "application/x-ndjson"},
                                       content=b"{}\n{}"), 415)


# store stock -----------------------------------------------------------------------------------------

def test_inventory_replace_patch_read(rec_client, admin, stores, redis_sync):
    r = rec_client.put("/v1/stores/s1/inventory", headers=admin, json={"85123A": 12, "22423": 0, "47566": 3})
    assert r.status_code == 200 and r.json() == {"85123A": 12, "22423": 0, "47566": 3}
    assert redis_sync.hgetall(stock_key("s1")) == {b"85123A": b"12", b"22423": b"0", b"47566": b"3"}
    r = rec_client.patch("/v1/stores/s1/inventory", headers=admin, json={"85123A": -2, "22423": 5, "new-sku": 1})
    assert r.status_code == 200 and r.json() == {"85123A": 10, "22423": 5, "new-sku": 1}, r.text
    assert rec_client.get("/v1/stores/s1/inventory", headers=admin).json() == \
        {"85123A": 10, "22423": 5, "47566": 3, "new-sku": 1}
    # full replace: what is not named is gone
    assert rec_client.put("/v1/stores/s1/inventory", headers=admin, json={"47566": 7}).status_code == 200
    assert rec_client.get("/v1/stores/s1/inventory", headers=admin).json() == {"47566": 7}
    assert rec_client.put("/v1/stores/s1/inventory", headers=admin, json={}).status_code == 200
    assert rec_client.get("/v1/stores/s1/inventory", headers=admin).json() == {}
    assert rec_client.get("/v1/stores/s2/inventory", headers=admin).json() == {}


def test_a_patch_that_would_go_negative_changes_nothing(rec_client, admin, stores, redis_sync, unchanged):
    rec_client.put("/v1/stores/s1/inventory", headers=admin, json={"a": 5, "b": 1})
    with unchanged():
        body = assert_problem(rec_client.patch("/v1/stores/s1/inventory", headers=admin,
                                               json={"a": -1, "b": -2, "c": 4, "d": -1}), 409, "nothing was changed")
        assert sorted(e["field"] for e in body["errors"]) == ["b", "d"]
        assert "1 held, -2 would leave -1" in body["detail"]
    assert redis_sync.hgetall(stock_key("s1")) == {b"a": b"5", b"b": b"1"}
    # down to exactly zero is fine
    r = rec_client.patch("/v1/stores/s1/inventory", headers=admin, json={"a": -5, "b": -1})
    assert r.status_code == 200 and r.json() == {"a": 0, "b": 0}


@pytest.mark.parametrize("method,body,words", [
    ("put", {"a": -1}, ["a", "greater than or equal to 0"]),
    ("put", {"a": 2.5}, ["a", "valid integer"]),
    ("put", {"a": 3.0}, ["a", "valid integer"]),
    ("put", {"a": "3"}, ["a", "valid integer"]),
    ("put", {"a": True}, ["a", "valid integer"]),
    ("put", {"a": None}, ["a"]),
    ("put", {"a": 10**12}, ["a", "less than or equal to"]),
    ("put", {"bad id": 1}, ["bad id"]),
    ("put", [1, 2], ["dictionary"]),
    ("patch", {"a": 0.5}, ["a", "valid integer"]),
    ("patch", {"a": "-1"}, ["a", "valid integer"]),
    ("patch", ["a"], ["dictionary"]),
])
def test_bad_stock_is_refused(rec_client, admin, stores, unchanged, method, body, words):
    rec_client.put("/v1/stores/s1/inventory", headers=admin, json={"a": 5})
    with unchanged():
        assert_problem(getattr(rec_client, method)("/v1/stores/s1/inventory", headers=admin, json=body), 422, *words)


def test_stock_of_an_unknown_store(rec_client, admin, stores, unchanged):
    with unchanged():
        for method in ("get", "put", "patch"):
            kw = {} if method == "get" else {"json": {"a": 1}}
            assert_problem(getattr(rec_client, method)("/v1/stores/nowhere/inventory", headers=admin, **kw), 404,
                           "nowhere")
        assert_problem(rec_client.put("/v1/stores/s1/inventory", headers={**admin, "content-type": "text/plain"},
                                      content=b"a=1"), 415)
        assert_problem(rec_client.patch("/v1/stores/s1/inventory", headers={**admin, **JSON}, content=b"{a: 1}"), 422,
                       "not valid JSON")


# campaign rules --------------------------------------------------------------------------------------

def test_rules_revisions_and_if_match(rec_client, admin, redis_sync, unchanged):
    r = rec_client.get("/v1/rules", headers=admin)
    assert r.status_code == 200 and r.headers["etag"] == '"0"'
    assert r.json() == {"revision": 0, "updated_at": None, "rules": {
        "paused_store_ids": [], "paused_brands": [], "suppress_closed_stores": False, "suppress_low_stock": False,
        "low_stock_threshold": 3}}

    r = rec_client.put("/v1/rules", headers=admin, json={"paused_brands": ["Acme", "Acme"]})
    assert r.status_code == 200 and r.headers["etag"] == '"1"' and r.json()["revision"] == 1
    assert r.json()["rules"]["paused_brands"] == ["Acme"]

    r = rec_client.put("/v1/rules", headers={**admin, "If-Match": '"1"'}, json={"suppress_closed_stores": True})
    assert r.status_code == 200 and r.json()["revision"] == 2
    assert r.json()["rules"]["paused_brands"] == []  # a PUT replaces the whole document

    with unchanged():
        stale = rec_client.put("/v1/rules", headers={**admin, "If-Match": '"1"'}, json={})
        assert_problem(stale, 412, "revision 2")
        assert stale.headers["etag"] == '"2"'
        assert_problem(rec_client.put("/v1/rules", headers={**admin, "If-Match": "banana"}, json={}), 412)
        assert_problem(rec_client.put("/v1/rules", headers=admin, json={"pause_all": True}), 422, "pause_all")
        assert_problem(rec_client.put("/v1/rules", headers=admin, json={"low_stock_threshold": 0}), 422,
                       "low_stock_threshold")
        assert_problem(rec_client.put("/v1/rules", headers=admin, json={"paused_store_ids": "s1"}), 422,
                       "paused_store_ids")
        assert_problem(rec_client.put("/v1/rules", headers=admin, json=[]), 422, "object")
        assert_problem(rec_client.put("/v1/rules", headers={**admin, **JSON}, content=b"{"), 422, "not valid JSON")
    assert rec_client.put("/v1/rules", headers={**admin, "If-Match": 'W/"2"'}, json={}).json()["revision"] == 3
    assert rec_client.put("/v1/rules", headers={**admin, "If-Match": "*"}, json={}).json()["revision"] == 4
    assert int(redis_sync.hget(RULES, "revision")) == 4


# what a store may show -------------------------------------------------------------------------------

def verdicts(client, headers, store_id: str, **params) -> tuple[list[str], dict[str, str]]:
    r = client.get(f"/v1/stores/{store_id}/offers", params=params, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    return [o["offer_id"] for o in body["eligible"]], {x["offer_id"]: x["reason"] for x in body["excluded"]}


def test_offers_at_a_store(rec_client, admin, device, stores):
    rec_client.post("/v1/offers", headers=admin, json=[
        offer("cheap", price=1.0, promo_price=None),
        offer("urgent", price=9.0, priority=10, promo_price=None),
        offer("web-only", channels=["web"]),
        offer("s2-only", store_ids=["s2"]),
        offer("bravo", brands=["Bravo"]),
        offer("needs-5", min_stock=5, item_ids=["a", "b"]),
        offer("collect", fulfilment="click_and_collect", item_ids=["a"]),
        offer("future", valid_from=MONDAY_10 + DAY, valid_to=MONDAY_10 + 2 * DAY),
        offer("past", valid_from=MONDAY_10 - 2 * DAY, valid_to=MONDAY_10 - DAY),
    ])
    rec_client.put("/v1/stores/s1/inventory", headers=admin, json={"a": 9, "b": 4})
    at = str(MONDAY_10)

    eligible, excluded = verdicts(rec_client, device, "s1", channel="store", at=at)
    assert eligible == ["urgent", "cheap", "collect"]  # priority first, then the canonical price (2.29)
    assert excluded == {"web-only": "channel", "s2-only": "store_scope", "bravo": "brand", "needs-5": "min_stock",
                        "future": "not_started", "past": "expired"}
    assert "web-only" in verdicts(rec_client, admin, "s1", channel="web", at=at)[0]
    assert "bravo" in verdicts(rec_client, admin, "s3", channel="store", at=at)[0]
    assert "needs-5" in verdicts(rec_client, admin, "s2", channel="store", at=at)[1]  # s2 holds nothing

    rec_client.patch("/v1/stores/s1/inventory", headers=admin, json={"b": 1})
    assert "needs-5" in verdicts(rec_client, admin, "s1", at=at)[0]

    # the campaign switches
    rec_client.put("/v1/rules", headers=admin, json={"suppress_low_stock": True, "low_stock_threshold": 10})
    assert verdicts(rec_client, admin, "s1", at=at)[1]["collect"] == "low_stock"
    rec_client.put("/v1/rules", headers=admin, json={"suppress_closed_stores": True})
    sunday = datetime(2030, 6, 9, 10, 0, tzinfo=ROME).timestamp()
    rec_client.put("/v1/offers/week", headers=admin, json=offer("week", valid_from=SUNDAY_10, valid_to=sunday + DAY))
    eligible, excluded = verdicts(rec_client, admin, "s1", at=str(sunday))
    assert eligible == [] and excluded["week"] == "store_closed"
    assert "week" in verdicts(rec_client, admin, "s3", at=str(sunday))[0]  # no hours known: open
    # 10:00 in Rome is 17:00 in Tokyo (open), 12:00 in Rome is 19:00 there (closed)
    assert "cheap" in verdicts(rec_client, admin, "s2", at="2030-06-03T10:00:00+02:00")[0]
    assert verdicts(rec_client, admin, "s2", at="2030-06-03T12:00:00+02:00")[1]["cheap"] == "store_closed"
    rec_client.put("/v1/rules", headers=admin, json={"paused_store_ids": ["s1"], "paused_brands": ["bravo"]})
    eligible, excluded = verdicts(rec_client, admin, "s1", at=at)
    assert eligible == [] and {excluded[o] for o in ("cheap", "urgent", "collect", "week")} == {"paused_store"}
    assert verdicts(rec_client, admin, "s3", at=at)[1]["cheap"] == "paused_brand"
    assert verdicts(rec_client, admin, "s2", at=at)[0]  # the other stores are untouched


def test_offers_at_a_store_bad_requests(rec_client, admin, device, stores):
    assert_problem(rec_client.get("/v1/stores/nowhere/offers", headers=device), 404, "nowhere")
    assert_problem(rec_client.get("/v1/stores/s1/offers", params={"channel": "fax"}, headers=device), 422, "channel")
    assert_problem(rec_client.get("/v1/stores/s1/offers", params={"at": "soon"}, headers=device), 422, "at")
    assert_problem(rec_client.get("/v1/stores/s1/offers"), 401)
    r = rec_client.get("/v1/stores/s1/offers", headers=device)
    assert r.status_code == 200 and r.json()["channel"] == "store" and abs(epoch(r.json()["at"]) - time.time()) < 60


# the command line and the demo catalogue -------------------------------------------------------------

@pytest.fixture
def served_recommender(rec_settings):
    """The recommender on a real port (uvicorn in a thread), for the CLI to reach over HTTP."""
    import threading

    import uvicorn

    from tests.support import free_port, wait_until

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_recommender(rec_settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, what="recommender started")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def run_cli(*args: str):
    import typer
    from typer.testing import CliRunner

    from vicino.services.cli.offers import offers_app

    app = typer.Typer()
    app.add_typer(offers_app, name="offers")  # as services/cli/__init__.py registers it
    return CliRunner().invoke(app, ["offers", *args])


CSV_HEAD = "offer_id,title,item_ids,category,price,promo_price,currency,valid_from,valid_to,store_ids,channels,min_stock\n"


def test_cli_imports_csv_skipping_malformed_rows(served_recommender, admin, redis_sync, tmp_path):
    from tests.conftest import ADMIN_TOKEN

    path = tmp_path / "offers.csv"
    path.write_text(CSV_HEAD +
                    "c1,Mug,22423|85123A,MUG,5.5,4.5,GBP,2030-06-01T00:00:00Z,2030-07-01T00:00:00Z,s1|s2,web|app,\n"
                    "c2,Bag,20725,BAG,abc,,GBP,1906000000,1907000000,,,\n"          # line 3: price not a number
                    "c3,Tin,22720,KITCHEN,4.95,,GBP,1906000000,1907000000,,\n"      # line 4: a cell short
                    "c4,Bad,22720,KITCHEN,4.95,5.95,GBP,1906000000,1907000000,,,\n"  # line 5: promo above price
                    '"c5","Candle, scented",22969,CANDLE,1.25,,GBP,1906000000,1907000000,,,3\n')
    r = run_cli("import", str(path), "--url", served_recommender, "--token", ADMIN_TOKEN)
    assert r.exit_code == 0, r.output
    assert "5 offers sent" not in r.output and "3 offers sent: 2 created, 0 updated, 1 rejected" in r.output
    lines = r.output.splitlines()
    assert any(ln.strip().startswith("line 3: skipped: price 'abc' is not a number") for ln in lines), r.output
    assert any(ln.strip().startswith("line 4: skipped: expected 12 cells") for ln in lines), r.output
    assert any(ln.strip().startswith("line 5: rejected c4: promo_price") for ln in lines), r.output
    assert sorted(k.decode() for k in redis_sync.hkeys(OFFERS)) == ["c1", "c5"]
    c1 = orjson.loads(redis_sync.hget(OFFERS, "c1"))
    assert (c1["item_ids"], c1["store_ids"], c1["channels"]) == (["22423", "85123A"], ["s1", "s2"], ["web", "app"])
    assert orjson.loads(redis_sync.hget(OFFERS, "c5"))["title"] == "Candle, scented"


def test_cli_imports_ndjson_and_json(served_recommender, redis_sync, tmp_path):
    from tests.conftest import ADMIN_TOKEN

    nd = tmp_path / "offers.ndjson"
    nd.write_bytes(orjson.dumps(offer("n1")) + b"\n{not json\n\n" + orjson.dumps(offer("n2", price=-1)) + b"\n")
    r = run_cli("import", str(nd), "--url", served_recommender, "--token", ADMIN_TOKEN)
    assert r.exit_code == 0, r.output
    assert "line 2: skipped: not valid JSON" in r.output and "line 4: rejected n2: price" in r.output, r.output
    js = tmp_path / "offers.json"
    js.write_bytes(orjson.dumps([offer("j1"), offer("j2")]))
    r = run_cli("import", str(js), "--url", served_recommender, "--token", ADMIN_TOKEN, "--batch", "1")
    assert r.exit_code == 0 and "2 created" in r.output, r.output
    assert sorted(k.decode() for k in redis_sync.hkeys(OFFERS)) == ["j1", "j2", "n1"]
    bad = tmp_path / "offers.csv"
    bad.write_text("offer_id,name\nx,y\n")
    r = run_cli("import", str(bad), "--url", served_recommender, "--token", ADMIN_TOKEN)
    assert r.exit_code == 2 and "unknown column(s) name" in r.output and "missing column(s) title" in r.output


def test_demo_catalogue_loads_and_is_current(rec_client, admin, device, stores):
    from vicino.services.launcher.demo_offers import demo_file, load_demo_offers

    assert demo_file().stat().st_size < 300_000
    rec_client.headers.update(admin)  # the launcher hands over a client with the admin token
    totals = load_demo_offers(rec_client)
    assert totals["created"] >= 250 and totals["rejected"] == [] and totals["warnings"] == [], totals["rejected"][:3]
    r = rec_client.get("/v1/stores/s1/offers", params={"channel": "app"}, headers=device)
    body = r.json()
    assert len(body["eligible"]) > 200
    assert {o["currency"] for o in body["eligible"]} == {"GBP"}
    assert {"not_started", "min_stock"} <= {x["reason"] for x in body["excluded"]}
    assert all(o["promo_price"] < o["price"] for o in body["eligible"])
