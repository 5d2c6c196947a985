"""The data layer's customer side against a real Redis and a real geo service: ingestion
(idempotent, per-item verdicts), identifiers and merges, the profile, erasure."""
from __future__ import annotations

import concurrent.futures
import hashlib
import time

import pytest

from vicino.services.kernel.contracts.interactions import interactions_stream_key, parse_stream_entry
from tests.conftest import ADMIN_TOKEN
from tests.support import assert_problem, fix_until_enter, redis_dump

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def ev(event_id: str, customer_id: str | None = "cust-a", **kw) -> dict:
    body = {"event_id": event_id, "channel": "web", "type": "view", "item_id": "sku-1", "ts": time.time() - 60}
    if customer_id is not None:
        body["customer_id"] = customer_id
    body.update(kw)
    return body


def post(client, items, headers=ADMIN):
    r = client.post("/v1/interactions", headers=headers, json=items)
    assert r.status_code == 200, r.text
    return r.json()


def stream_entries(redis_sync, shards: int = 16) -> list:
    out = []
    for s in range(shards):
        out += [parse_stream_entry(f) for _id, f in redis_sync.xrange(interactions_stream_key(s))]
    return out


def register_device(geo_http, device_id: str, customer_id: str) -> dict:
    r = geo_http.post("/v1/devices", json={"device_id": device_id, "customer_id": customer_id,
                                           "platform": "android", "push_token": "push-" + device_id})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def set_consent(geo_http, customer_id: str, **values) -> None:
    body = {"location": True, "marketing": True, "personalisation": True, **values}
    r = geo_http.put(f"/v1/customers/{customer_id}/consent", json=body)
    assert r.status_code == 200, r.text


# --- ingestion -------------------------------------------------------------------------------

def test_a_batch_lands_in_hot_history_and_the_stream_once(rec_client, redis_sync):
    items = [ev("e1", channel="web"), ev("e2", channel="app", type="add_to_cart"),
             ev("e3", channel="store", type="purchase", quantity=2, value=9.5, store_id="s1")]
    out = post(rec_client, items)
    assert (out["accepted"], out["duplicates"], out["rejected"]) == (3, 0, [])
    again = post(rec_client, items)  # a retried request
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    logged = stream_entries(redis_sync)
    assert sorted(e.event_id for e in logged) == ["e1", "e2", "e3"]
    profile = rec_client.get("/v1/customers/cust-a", headers=ADMIN).json()
    mix = profile["history"]["channel_mix"]
    assert (mix["web"]["count"], mix["app"]["count"], mix["store"]["count"], mix["email"]["count"]) == (1, 1, 1, 0)
    assert [p["event_id"] for p in profile["last_purchases"]] == ["e3"]
    assert profile["last_purchases"][0]["value"] == 9.5


def test_concurrent_retries_of_one_batch_store_each_event_once(rec_client, redis_sync):
    items = [ev(f"c{i}", customer_id=f"cust-{i % 7}") for i in range(300)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: post(rec_client, items), range(6)))
    assert sum(r["accepted"] for r in results) == 300
    assert sum(r["duplicates"] for r in results) == 300 * 5
    assert sorted(e.event_id for e in stream_entries(redis_sync)) == sorted(f"c{i}" for i in range(300))


def test_the_same_event_twice_in_one_batch_counts_once(rec_client, redis_sync):
    out = post(rec_client, [ev("d1"), ev("d1")])
    assert (out["accepted"], out["duplicates"]) == (1, 1)
    assert len(stream_entries(redis_sync)) == 1


def test_hot_history_is_bounded_and_keeps_the_most_recent(rec_settings, redis_sync):
    from fastapi.testclient import TestClient

    from vicino.services.recommender.app import create_app

    settings = rec_settings.model_copy(update={"history_hot_per_customer": 5})
    with TestClient(create_app(settings)) as client:
        now = time.time()
        post(client, [ev(f"h{i}", ts=now - 1000 + i) for i in range(12)])
        hist = client.get("/v1/customers/cust-a/history", headers=ADMIN, params={"limit": 100}).json()
    assert [h["event_id"] for h in hist["interactions"]] == ["h11", "h10", "h9", "h8", "h7"]
    assert len(stream_entries(redis_sync)) == 12  # the log keeps everything


@pytest.mark.parametrize("item, reason, needle", [
    (ev("b1", channel="fax"), "invalid", "channel"),
    (ev("b2", type="like"), "invalid", "type"),
    (ev("b3", customer_id=None), "missing_customer", "exactly one"),
    (ev("b4", identifier={"kind": "loyalty_card", "value": "L1"}), "ambiguous_customer", "exactly one"),
    (ev("b5", customer_id=None, identifier={"kind": "loyalty_card", "value": "nobody"}), "unknown_identifier",
     "linked to no customer"),
    (ev("b6", type="purchase", quantity=-2), "invalid", "quantity"),
    (ev("b7", type="purchase", item_id=None), "missing_item_id", "item_id"),
    (ev("b8", type="offer_redeem", item_id=None), "missing_offer_id", "offer_id"),
    (ev("b9", ts=time.time() + 86_400), "ts_in_future", "ahead"),
    (ev("b10", ts="2026-11-26T10:00:00"), "invalid", "UTC offset"),
    (ev("b11", value=-1), "invalid", "value"),
    (ev("b12", customer_id=None, identifier={"kind": "fax", "value": "1"}), "invalid", "identifier"),
    (ev("b13", extra_field=1), "invalid", "extra"),
    ({"event_id": "b14"}, "invalid", "channel"),
    ("not an object", "invalid", "object"),
    (ev("b15", type="survey", item_id=None), "missing_score", "score"),
    (ev("b16", type="survey", item_id=None, score=11), "invalid", "score"),
    (ev("b17", type="purchase", score=9), "invalid", "score"),
    (ev("b18", type="support_reply", item_id=None, channel="email"), "missing_reply_to", "reply_to"),
    (ev("b19", type="support_reply", item_id=None, channel="store", reply_to="c1"), "invalid", "channel"),
    (ev("b20", type="view", reply_to="c1"), "invalid", "reply_to"),
])
def test_bad_items_are_rejected_one_by_one_and_the_rest_kept(rec_client, redis_sync, item, reason, needle):
    out = post(rec_client, [ev("good-1"), item, ev("good-2")])
    assert out["accepted"] == 2, out
    assert len(out["rejected"]) == 1, out
    rej = out["rejected"][0]
    assert rej["index"] == 1 and rej["reason"] == reason, rej
    assert needle.lower() in rej["detail"].lower(), rej
    assert sorted(e.event_id for e in stream_entries(redis_sync)) == ["good-1", "good-2"]


def test_bad_batches_get_a_clear_4xx_and_change_nothing(rec_client, rec_settings, redis_sync):
    before = redis_dump(redis_sync)
    too_many = [ev(f"x{i}") for i in range(rec_settings.max_batch + 1)]
    assert_problem(rec_client.post("/v1/interactions", headers=ADMIN, json=too_many), 413, "at most")
    assert_problem(rec_client.post("/v1/interactions", headers=ADMIN, json=[]), 422, "empty")
    assert_problem(rec_client.post("/v1/interactions", headers=ADMIN, json={"a": 1}), 422, "array")
    assert_problem(rec_client.post("/v1/interactions", headers={**ADMIN, "Content-Type": "application/json"},
                                   content=b"[{"), 422, "not valid JSON")
    assert_problem(rec_client.post("/v1/interactions", headers={**ADMIN, "Content-Type": "text/csv"},
                                   content=b"a,b"), 415)
    assert_problem(rec_client.post("/v1/interactions", json=[ev("n1")]), 401)
    assert redis_dump(redis_sync) == before


# --- identifiers and merges ---------------------------------------------------------------------

def link(client, customer_id, kind, value, status=(200, 201), verified=True):
    r = client.post(f"/v1/customers/{customer_id}/identifiers", headers=ADMIN,
                    json={"kind": kind, "value": value, "verified": verified})
    assert r.status_code in status, r.text
    return r.json()


def test_an_interaction_by_identifier_reaches_its_customer(rec_client, geo_http):
    assert link(rec_client, "cust-a", "loyalty_card", "L-100")["created"] is True
    assert link(rec_client, "cust-a", "loyalty_card", "L-100")["created"] is False  # idempotent
    register_device(geo_http, "phone-9", "cust-p")
    out = post(rec_client, [ev("i1", customer_id=None, identifier={"kind": "loyalty_card", "value": "L-100"}),
                            ev("i2", customer_id=None, identifier={"kind": "device", "value": "phone-9"})])
    assert [r["customer_id"] for r in out["results"]] == ["cust-a", "cust-p"], out
    r = rec_client.get("/v1/identifiers/loyalty_card/L-100", headers=ADMIN)
    assert r.json()["customer_id"] == "cust-a"
    assert_problem(rec_client.get("/v1/identifiers/loyalty_card/L-404", headers=ADMIN), 404, "no customer")


def test_a_raw_email_is_kept_only_as_its_digest(rec_client, redis_sync):
    out = link(rec_client, "cust-a", "email", "Ada.Lovelace@Example.org ")
    digest = hashlib.sha256(b"ada.lovelace@example.org").hexdigest()
    assert out["identifier"] == "email_sha256:" + digest
    assert "lovelace" not in repr(redis_dump(redis_sync)).lower()
    same = post(rec_client, [ev("m1", customer_id=None, identifier={"kind": "email_sha256", "value": digest})])
    assert same["results"][0]["customer_id"] == "cust-a"


def test_bad_identifiers_get_422(rec_client):
    for body in ({"kind": "fax", "value": "1"}, {"kind": "email", "value": "not-an-address"},
                 {"kind": "email_sha256", "value": "abc"}, {"kind": "cookie", "value": "a b"},
                 {"kind": "cookie"}):
        r = rec_client.post("/v1/customers/cust-a/identifiers", headers=ADMIN, json=body)
        assert_problem(r, 422)


def _build_two_customers(client, geo_http, first: str, second: str) -> None:
    post(client, [ev("a1", customer_id=first, type="purchase", quantity=1),
                  ev("a2", customer_id=first, channel="email", type="view"),
                  ev("b1", customer_id=second, channel="store", type="purchase", quantity=3),
                  ev("b2", customer_id=second, channel="call_center", type="support_contact", item_id=None)])
    link(client, first, "loyalty_card", f"card-{first}")
    link(client, second, "cookie", f"cookie-{second}")
    set_consent(geo_http, first, marketing=True)
    set_consent(geo_http, second, marketing=False)


def _merged_view(client, customer_id) -> dict:
    p = client.get(f"/v1/customers/{customer_id}", headers=ADMIN).json()
    hist = client.get(f"/v1/customers/{customer_id}/history", headers=ADMIN, params={"limit": 100}).json()
    return {"customer_id": p["customer_id"], "merged_from": p["merged_from"],
            "identifiers": sorted((i["kind"], i["value"]) for i in p["identifiers"]),
            "consent": {k: p["consent"][k] for k in ("location", "marketing", "personalisation")},
            "history": sorted(h["event_id"] for h in hist["interactions"])}


def test_linking_another_customers_identifier_merges_them_whatever_the_order(rec_client, geo_http, redis_sync):
    # order 1: the card of m-1 is linked to m-2
    _build_two_customers(rec_client, geo_http, "m-1", "m-2")
    out = link(rec_client, "m-2", "loyalty_card", "card-m-1")
    assert out["customer_id"] == "m-1" and out["merged"] == ["m-2"]
    view1 = _merged_view(rec_client, "m-2")
    # order 2, fresh customers: the cookie of n-2 is linked to n-1
    _build_two_customers(rec_client, geo_http, "n-1", "n-2")
    link(rec_client, "n-1", "cookie", "cookie-n-2")
    view2 = _merged_view(rec_client, "n-1")
    rename = lambda v: {**v, "customer_id": v["customer_id"].replace("n-", "m-"),  # noqa: E731
                        "merged_from": [m.replace("n-", "m-") for m in v["merged_from"]],
                        "identifiers": sorted((k, x.replace("n-", "m-")) for k, x in v["identifiers"])}
    assert view1 == rename(view2)
    assert view1["customer_id"] == "m-1" and view1["merged_from"] == ["m-2"]
    assert view1["history"] == ["a1", "a2", "b1", "b2"]
    assert view1["consent"] == {"location": True, "marketing": False, "personalisation": True}  # the stricter
    for cust in ("m-1", "m-2"):  # geo holds the stricter consent for both ids
        assert geo_http.get(f"/v1/customers/{cust}/consent").json()["marketing"] is False
    # after the merge, interactions for the merged id land with the survivor
    out = post(rec_client, [ev("late", customer_id="m-2")])
    assert out["results"][0]["customer_id"] == "m-1"
    # merging again is a no-op
    assert link(rec_client, "m-1", "cookie", "cookie-m-2")["merged"] == []
    merges = [e for e in stream_entries(redis_sync) if getattr(e, "merged", None)]
    assert {(m.merged, m.into) for m in merges} == {("m-2", "m-1"), ("n-2", "n-1")}


def test_merges_of_three_in_any_order_end_with_the_smallest_id(rec_client):
    for order in (("x3", "x2", "x1"), ("y1", "y3", "y2")):
        p = order[0][0]
        for c in order:
            post(rec_client, [ev(f"{c}-e", customer_id=c)])
            link(rec_client, c, "cookie", f"own-{c}")
        link(rec_client, order[0], "cookie", f"own-{order[1]}")
        link(rec_client, order[2], "cookie", f"own-{order[0]}")
        for c in order:
            view = _merged_view(rec_client, c)
            assert view["customer_id"] == f"{p}1"
            assert view["history"] == sorted(f"{x}-e" for x in order)


def test_device_tokens_act_only_for_their_customer(rec_client, geo_http):
    mine = register_device(geo_http, "phone-a", "cust-a")
    out = post(rec_client, [ev("t1", customer_id="cust-a"), ev("t2", customer_id="cust-b")], headers=mine)
    assert out["accepted"] == 1 and out["rejected"][0]["reason"] == "not_your_customer"
    assert rec_client.get("/v1/customers/cust-a", headers=mine).status_code == 200
    assert_problem(rec_client.get("/v1/customers/cust-b", headers=mine), 403, "own customer")
    assert_problem(rec_client.delete("/v1/customers/cust-a", headers=mine), 403, "admin")
    assert_problem(rec_client.post("/v1/customers/cust-a/identifiers", headers=mine,
                                   json={"kind": "cookie", "value": "c"}), 403, "admin")
    # a replaced registration locks the old token out
    register_device(geo_http, "phone-a", "cust-a")
    assert_problem(rec_client.get("/v1/customers/cust-a", headers=mine), 401, "replaced")


def test_a_device_cannot_tell_an_unknown_identifier_from_someone_elses(rec_client, geo_http):
    link(rec_client, "cust-other", "loyalty_card", "L-theirs")
    mine = register_device(geo_http, "phone-q", "cust-q")
    answers = []
    for value in ("L-theirs", "L-nobody"):  # linked to another customer / linked to no one
        item = ev("probe", customer_id=None, identifier={"kind": "loyalty_card", "value": value})
        r = rec_client.post("/v1/interactions", headers=mine, json=[item])
        answers.append((r.status_code, r.headers["content-type"], r.content))
    assert answers[0] == answers[1], answers
    assert b"not_your_customer" in answers[0][2]
    # a key still learns which it is (the retailer's systems resolve identifiers anyway)
    out = post(rec_client, [ev("k", customer_id=None, identifier={"kind": "loyalty_card", "value": "L-nobody"})])
    assert out["rejected"][0]["reason"] == "unknown_identifier"


def test_linking_another_customers_identifier_merges_only_when_verified(rec_client, redis_sync):
    post(rec_client, [ev("v1", customer_id="v-1"), ev("v2", customer_id="v-2")])
    link(rec_client, "v-1", "loyalty_card", "card-v1")
    before = redis_dump(redis_sync)
    r = rec_client.post("/v1/customers/v-2/identifiers", headers=ADMIN,
                        json={"kind": "loyalty_card", "value": "card-v1"})
    assert_problem(r, 409, "verified")
    r = rec_client.post("/v1/customers/v-2/identifiers", headers=ADMIN,
                        json={"kind": "loyalty_card", "value": "card-v1", "verified": False})
    assert_problem(r, 409, "verified")
    assert redis_dump(redis_sync) == before  # no merge, no link, nothing
    assert _merged_view(rec_client, "v-2")["customer_id"] == "v-2"
    # a free identifier links without it; a verified one merges
    assert link(rec_client, "v-2", "cookie", "cookie-v2", verified=False)["created"] is True
    out = link(rec_client, "v-2", "loyalty_card", "card-v1", verified=True)
    assert out["customer_id"] == "v-1" and out["merged"] == ["v-2"]


def test_a_merged_customers_phone_still_reaches_the_merged_profile(rec_client, geo_http):
    phone = register_device(geo_http, "phone-z", "z-2")
    post(rec_client, [ev("z", customer_id="z-1")])
    link(rec_client, "z-1", "device", "phone-z")
    r = rec_client.get("/v1/customers/z-2", headers=phone)
    assert r.status_code == 200 and r.json()["customer_id"] == "z-1"
    assert [d["device_id"] for d in r.json()["devices"]] == ["phone-z"]


def test_unknown_customer_profile_is_404(rec_client):
    assert_problem(rec_client.get("/v1/customers/nobody", headers=ADMIN), 404, "unknown")
    assert_problem(rec_client.get("/v1/customers/bad%20id", headers=ADMIN), 422)


# --- erasure ------------------------------------------------------------------------------------

def test_erasure_leaves_no_trace_in_redis(rec_client, geo_http, redis_sync):
    from vicino.services.recommender.adapters.redis_keys import ERASURES, erasure_digest

    geo_http.put("/v1/stores/shop-1", json={"type": "Feature", "id": "shop-1", "properties": {"radius_m": 80},
                                             "geometry": {"type": "Point", "coordinates": [9.19, 45.4642]}})
    phone = register_device(geo_http, "zz-phone-erase", "zz-erase-me")
    set_consent(geo_http, "zz-erase-me")
    # a fix inside the store: visit state and an enter event in the geo streams
    fix_until_enter(geo_http, phone, "zz-phone-erase", 45.4642, 9.19, "shop-1")
    post(rec_client, [ev("zz-1", customer_id="zz-erase-me", type="purchase", quantity=1),
                      ev("zz-2", customer_id="zz-alias-me", channel="email", type="offer_redeem", item_id=None,
                         offer_id="o-1")])
    link(rec_client, "zz-erase-me", "email", "zz.person@example.org")
    link(rec_client, "zz-alias-me", "loyalty_card", "zz-card-1")
    link(rec_client, "zz-erase-me", "loyalty_card", "zz-card-1")  # merges zz-alias-me into zz-erase-me
    post(rec_client, [ev("zz-keep", customer_id="someone-else")])
    # dead letters the recommender wrote may hold the person too
    from vicino.services.kernel.contracts.geofence_events import events_stream_key
    from vicino.services.kernel.contracts.interactions import customer_shard

    shard = customer_shard("zz-erase-me", 16)
    redis_sync.xadd(interactions_stream_key(shard).replace(":v1", ":dead"),
                    {"kind": "interaction", "data": '{"customer_id":"zz-erase-me","x":1}', "dead_reason": "test"})
    redis_sync.xadd(events_stream_key(3) + ":dead", {"event": '{"customer_id":"zz-erase-me"}', "dead_reason": "t"})
    # what the decision worker keeps of them: caps, decided visits, decisions and push jobs
    from vicino.services.recommender.adapters.decision_repository import DecisionKeys

    dk = DecisionKeys("zz-erase-me", 16)
    redis_sync.zadd(dk.decided_visits, {"vis-1": time.time()})
    redis_sync.zadd(dk.store_pushes, {"shop-1": time.time()})
    redis_sync.xadd(dk.decisions, {"v": "1", "data": '{"customer_id":"zz-erase-me","visit_id":"vis-1"}'})
    redis_sync.xadd(dk.push_jobs, {"v": "1", "data": '{"customer_id":"zz-alias-me","push_token":"zz-token"}'})
    r = rec_client.delete("/v1/customers/zz-alias-me", headers=ADMIN)  # any id of the person
    assert r.status_code == 200, r.text
    assert r.json()["erased_customers"] == 2 and r.json()["devices_removed"] == 1
    dump = repr(redis_dump(redis_sync))
    for needle in ("zz-erase-me", "zz-alias-me", "zz-phone-erase", "zz-card-1", "zz-1", "zz-2", "zz-token",
                   hashlib.sha256(b"zz.person@example.org").hexdigest()):
        assert needle not in dump, f"{needle} survived the erasure"
    assert "someone-else" in dump  # others untouched
    from vicino.services.kernel.contracts.erasures import legacy_erasure_digest, register_key
    from tests.conftest import TOKEN_SECRET

    assert redis_sync.hexists(ERASURES, erasure_digest("zz-erase-me", register_key(TOKEN_SECRET)))
    # keyed: the bare SHA-256 of a guessable id would name the person to anyone who can read Redis
    assert not redis_sync.hexists(ERASURES, legacy_erasure_digest("zz-erase-me"))
    assert_problem(rec_client.get("/v1/customers/zz-erase-me", headers=ADMIN), 404)
    assert_problem(rec_client.delete("/v1/customers/zz-erase-me", headers=ADMIN), 404, "no data")
    assert_problem(rec_client.get("/v1/customers/zz-erase-me", headers=phone), 401)


def test_an_erasure_that_failed_part_way_is_finished_by_its_retry(rec_client, redis_sync):
    """The first attempt fails after the survivor's keys (its list of aliases among them) are gone
    and before the alias's: the retry must still find the alias and erase it, not answer 404."""
    from vicino.services.recommender.adapters.redis_keys import CustomerKeys

    post(rec_client, [ev("pw-1", customer_id="pw-a"), ev("pw-2", customer_id="pw-b")])
    link(rec_client, "pw-b", "loyalty_card", "pw-card")
    assert link(rec_client, "pw-a", "loyalty_card", "pw-card")["merged"] == ["pw-b"]
    # Redis refuses the alias's step (a key of the wrong type): the first attempt fails there
    poison = CustomerKeys("pw-b", 16).identifiers
    redis_sync.set(poison, "not a set")
    r = rec_client.delete("/v1/customers/pw-a", headers=ADMIN)
    assert r.status_code >= 500, r.text
    assert not redis_sync.exists(CustomerKeys("pw-a", 16).aliases)  # the survivor's part is done
    redis_sync.delete(poison)
    r = rec_client.delete("/v1/customers/pw-a", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["erased_customers"] == 2
    dump = repr(redis_dump(redis_sync))
    for needle in ("pw-a", "pw-b", "pw-card", "pw-1", "pw-2"):
        assert needle not in dump, f"{needle} survived the erasure"
    assert_problem(rec_client.delete("/v1/customers/pw-a", headers=ADMIN), 404, "no data")


def test_erasure_of_an_unknown_customer_is_404(rec_client):
    assert_problem(rec_client.delete("/v1/customers/never-seen", headers=ADMIN), 404)


# --- visits -------------------------------------------------------------------------------------

def test_visits_from_geo_events_reach_the_profile(rec_client, rec_settings, geo_http, redis_sync):
    import asyncio

    from vicino.services.runtime.redis_client import open_async
    from vicino.services.recommender.wiring import build_visit_consumer

    geo_http.put("/v1/stores/shop-v", json={"type": "Feature", "id": "shop-v", "properties": {"radius_m": 80},
                                             "geometry": {"type": "Point", "coordinates": [9.19, 45.4642]}})
    phone = register_device(geo_http, "phone-v", "cust-v")
    set_consent(geo_http, "cust-v")
    # (the session's geo replica may still know stores of earlier tests at this spot)
    entered = {e["store_id"] for e in fix_until_enter(geo_http, phone, "phone-v", 45.4642, 9.19, "shop-v")
               if e["type"] == "enter"}
    redis_sync.xadd("vicino:{geo:000}:events:geofence:v1", {"v": "1", "event": "garbage"})

    async def drain():
        redis = open_async(rec_settings.redis_url)
        try:
            consumer = build_visit_consumer(rec_settings, redis, "test-consumer")
            handled = await consumer.run_once()
            return handled, consumer.dead
        finally:
            await redis.aclose()

    handled, dead = asyncio.run(drain())
    assert handled == len(entered) + 1 and dead == 1
    visits = rec_client.get("/v1/customers/cust-v", headers=ADMIN).json()["last_visits"]
    assert {(v["store_id"], v["left_at"]) for v in visits} == {(s, None) for s in entered}
    assert redis_sync.xlen("vicino:{geo:000}:events:geofence:v1:dead") == 1


def test_visits_queued_before_a_location_withdrawal_are_not_recorded(rec_client, rec_settings, geo_http):
    import asyncio

    from vicino.services.runtime.redis_client import open_async
    from vicino.services.recommender.wiring import build_visit_consumer

    geo_http.put("/v1/stores/shop-w", json={"type": "Feature", "id": "shop-w", "properties": {"radius_m": 80},
                                             "geometry": {"type": "Point", "coordinates": [9.30, 45.50]}})
    entered = {}
    for customer in ("cust-keeps", "cust-withdraws"):
        phone = register_device(geo_http, f"phone-{customer}", customer)
        set_consent(geo_http, customer)
        entered[customer] = [e for e in fix_until_enter(geo_http, phone, f"phone-{customer}", 45.50, 9.30, "shop-w")
                             if e["type"] == "enter"]
        assert entered[customer]
    # the enter events wait in the streams while the customer withdraws location consent
    set_consent(geo_http, "cust-withdraws", location=False)

    async def drain():
        redis = open_async(rec_settings.redis_url)
        try:
            consumer = build_visit_consumer(rec_settings, redis, "test-consumer")
            for _ in range(20):
                if not await consumer.run_once():
                    break
        finally:
            await redis.aclose()

    asyncio.run(drain())
    kept = rec_client.get("/v1/customers/cust-keeps", headers=ADMIN).json()["last_visits"]
    assert {v["store_id"] for v in kept} >= {"shop-w"}
    withdrawn = rec_client.get("/v1/customers/cust-withdraws", headers=ADMIN)
    assert withdrawn.status_code in (200, 404), withdrawn.text
    assert withdrawn.status_code == 404 or withdrawn.json()["last_visits"] == []


def test_info_logs_name_no_customer(rec_client, redis_sync, caplog):
    """Ingestion, a merge, an erasure that fails part-way (a 500, logged with its traceback) and
    its retry, with every logger at INFO: the customers' ids and identifiers never reach the logs."""
    import logging

    from vicino.services.recommender.adapters.redis_keys import CustomerKeys
    from vicino.services.runtime.observability import JsonFormatter, quiet_request_logs

    caplog.set_level(logging.INFO)
    quiet_request_logs()  # as configure_logging sets the services' processes up
    post(rec_client, [ev("lg-1", customer_id="lg-person-a"), ev("lg-2", customer_id="lg-person-b")])
    link(rec_client, "lg-person-b", "loyalty_card", "lg-card")
    link(rec_client, "lg-person-a", "loyalty_card", "lg-card")  # merges them
    redis_sync.set(CustomerKeys("lg-person-b", 16).identifiers, "not a set")
    assert rec_client.delete("/v1/customers/lg-person-a", headers=ADMIN).status_code == 500
    redis_sync.delete(CustomerKeys("lg-person-b", 16).identifiers)
    assert rec_client.delete("/v1/customers/lg-person-a", headers=ADMIN).status_code == 200
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "customers merged" in text and "customer erased" in text and "unhandled error" in text, text
    for needle in ("lg-person", "lg-card"):
        assert needle not in text, text
