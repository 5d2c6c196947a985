"""Campaigns as data (issue 17), against a real Redis and a real geo service: the campaign API
with its revisions, status transitions and refusals; the decision over campaigns (matching,
priority order, every limit and its reason, the holdout per campaign, the locale and its
formatting); the explanations of a sent and of a suppressed visit; the preview and the test
send; and one consistent campaign version per decision while a campaign is edited.

Decisions are driven through the decision worker's consumer over events appended to geo's
streams, with a small real ranker over fixed offers (as in test_decisions)."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from vicino.services.kernel.clock import FixedClock
from vicino.services.kernel.contracts.push_jobs import PushJobV1, push_jobs_stream_key
from vicino.services.recommender.domain.campaigns import campaign_holdout
from vicino.services.recommender.adapters.campaign_repository import decode
from tests.conftest import circle_store
from tests.integration.test_decisions import Offer, Ranking, decisions, drain, event, jobs, publish, register
from tests.support import assert_problem, redis_dump

ROME = ZoneInfo("Europe/Rome")
DAY = 86_400


def at(hour: int, minute: int = 0, day: int = 3) -> float:
    """Wednesday 3 June 2026 (a weekday) in Rome."""
    return datetime(2026, 6, day, hour, minute, tzinfo=ROME).timestamp()


CATALOGUE = [Offer("o-mug", 0.9, 8.0, "EUR", "Tazza", "-20%", item_ids=("mug",), regular_price=10.0,
                   valid_to=at(12, day=30)),
             Offer("o-tea", 0.5, 3.4, "EUR", "Tè verde", "2x1", item_ids=("tea",), regular_price=4.0,
                   valid_to=at(12, day=30))]


@dataclass
class Ranker:
    offers: list[Offer] = field(default_factory=lambda: list(CATALOGUE))
    pause: threading.Event | None = None      # set: rank() waits for `resume` (an edit happens meanwhile)
    resume: threading.Event | None = None

    async def rank(self, customer_id, *, personalisation, store_id, channel, k, now) -> Ranking:
        if self.pause is not None:
            self.pause.set()
            while not self.resume.is_set():
                await asyncio.sleep(0.01)
        return Ranking(sorted(self.offers, key=lambda o: -o.score)[:k], "m-1")


def campaign(**kw) -> dict:
    base = {"name": "Caffè di giugno", "status": "active", "priority": 0, "trigger": {"on": "dwell"},
            "limits": {"holdout_percent": 0}}
    return {**base, **kw}


ITALIAN = {"templates": {"it": {"title": "{offer_title} da {store_name}",
                                "body": "Solo {price} invece di {regular_price} (-{discount_percent}), fino al "
                                        "{valid_to}"},
                         "en": {"title": "{offer_title} at {store_name}",
                                "body": "Only {price} instead of {regular_price}"}},
           "default_locale": "it"}


@pytest.fixture
def world(rec_client, geo_http, rec_settings):
    """Two stores at geo (names, brands), the admin's headers, the decision settings."""
    for sid, brand in (("s-1", "Coop"), ("s-2", "Esselunga")):
        f = circle_store(sid, 45.46, 9.19, name=f"{brand} Centro", brand=brand)
        r = geo_http.put(f"/v1/stores/{sid}", json=f)
        assert r.status_code in (200, 201), r.text
    return rec_settings.model_copy(update={"holdout_percent": 0.0})


def put(rec_client, admin, campaign_id: str, body: dict, status: int = 201, etag: str | None = None) -> dict:
    headers = {**admin, **({"If-Match": etag} if etag else {})}
    r = rec_client.put(f"/v1/campaigns/{campaign_id}", headers=headers, json=body)
    assert r.status_code == status, r.text
    return r.json()


def visit(redis_sync, settings, ranker, clock, device: str, customer: str, store: str, visit_id: str):
    publish(redis_sync, event("dwell", device, customer, store, visit_id, clock.now() - 2))
    drain(settings, ranker, clock)
    return [d for d in decisions(redis_sync) if d.visit_id == visit_id]


# --- the API ---------------------------------------------------------------------------------------

def test_a_campaigns_life_with_revisions_and_legal_transitions(rec_client, admin, world):
    r = rec_client.get("/v1/campaigns", headers=admin)
    assert r.json() == {"campaigns": [], "default_active": True}
    created = put(rec_client, admin, "c-1", campaign(status="draft", message=ITALIAN))
    assert (created["revision"], created["status"], created["message"]["default_locale"]) == (1, "draft", "it")
    r = rec_client.get("/v1/campaigns/c-1", headers=admin)
    assert r.headers["ETag"] == '"1"' and r.json() == created
    # an edit needs the ETag, and the current one
    assert_problem(rec_client.put("/v1/campaigns/c-1", headers=admin, json=campaign()), 428, "If-Match")
    assert_problem(rec_client.put("/v1/campaigns/c-1", headers={**admin, "If-Match": '"7"'}, json=campaign()), 412,
                   "revision 1")
    active = put(rec_client, admin, "c-1", campaign(message=ITALIAN), 200, '"1"')
    assert (active["revision"], active["status"]) == (2, "active")
    assert_problem(rec_client.put("/v1/campaigns/c-1", headers={**admin, "If-Match": '"2"'},
                                  json=campaign(status="draft")), 409, "from active to draft")
    paused = put(rec_client, admin, "c-1", campaign(status="paused"), 200, 'W/"2"')
    paused = put(rec_client, admin, "c-1", campaign(status="paused"), 200, "*")  # whatever is current
    assert paused["revision"] == 4
    assert_problem(rec_client.put("/v1/campaigns/c-9", headers={**admin, "If-Match": "*"}, json=campaign()), 412)
    assert_problem(rec_client.put("/v1/campaigns/c-1", headers={**admin, "If-Match": "abc"}, json=campaign()), 412,
                   "not a revision")
    put(rec_client, admin, "c-1", campaign(status="active"), 200, f'"{paused["revision"]}"')
    listed = rec_client.get("/v1/campaigns?status=active", headers=admin).json()
    assert [c["campaign_id"] for c in listed["campaigns"]] == ["c-1"] and listed["default_active"] is False
    assert rec_client.get("/v1/campaigns?status=draft", headers=admin).json()["campaigns"] == []
    # DELETE ends a running campaign and keeps it; an ended campaign is final
    ended = rec_client.delete("/v1/campaigns/c-1", headers=admin)
    assert ended.status_code == 200 and ended.json()["status"] == "ended"
    assert_problem(rec_client.put("/v1/campaigns/c-1", headers={**admin, "If-Match": ended.headers["ETag"]},
                                  json=campaign()), 409, "ended")
    # DELETE removes a draft
    put(rec_client, admin, "c-2", campaign(status="draft"))
    assert rec_client.delete("/v1/campaigns/c-2", headers=admin).status_code == 204
    assert_problem(rec_client.get("/v1/campaigns/c-2", headers=admin), 404, "c-2")
    assert_problem(rec_client.put("/v1/campaigns/c-3", headers=admin, json=campaign(status="ended")), 409)


def test_an_analyst_reads_campaigns_and_may_not_write_them(rec_client, admin, world, geo_http):
    put(rec_client, admin, "c-1", campaign())
    r = geo_http.post("/v1/keys", json={"name": "analyst", "roles": ["analyst"]})
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    assert rec_client.get("/v1/campaigns/c-1", headers=key).status_code == 200
    assert_problem(rec_client.put("/v1/campaigns/c-1", headers=key, json=campaign()), 403, code="forbidden_role")
    assert_problem(rec_client.post("/v1/campaigns/c-1/test-sends", headers=key, json={"device_id": "d"}), 403,
                   code="forbidden_role")


BAD = {
    "unknown offers": ({"offers": {"offer_ids": ["o-nope", "o-gone"]}}, "unknown offers: o-gone, o-nope"),
    "unknown stores": ({"trigger": {"on": "enter", "store_ids": ["s-1", "s-nope"]}}, "unknown stores: s-nope"),
    "unknown field": ({"message": {"templates": {"it": {"title": "{prize}"}}, "default_locale": "it"}}, "prize"),
    "unbalanced braces": ({"message": {"templates": {"it": {"title": "Sconto {price"}}, "default_locale": "it"}},
                          "brace"),
    "over the APNs limit": ({"message": {"templates": {"it": {"title": "x", "body": "y" * 3990}},
                                         "default_locale": "it"}}, "4096"),
    "no default template": ({"message": {"templates": {"it": {"title": "x"}}, "default_locale": "en"}},
                            "default_locale"),
    "bad locale": ({"message": {"templates": {"??": {"title": "x"}}, "default_locale": "??"}}, "BCP 47"),
    "ends before it starts": ({"starts_at": "2026-06-10T00:00:00Z", "ends_at": "2026-06-01T00:00:00Z"},
                              "ends_at must be after starts_at"),
    "malformed hours": ({"hours": "Mo-Fr 25:00-26:00"}, "opening_hours"),
    "holdout over 100": ({"limits": {"holdout_percent": 101}}, "limits.holdout_percent"),
    "a negative limit": ({"limits": {"per_customer_per_day": -1}}, "limits.per_customer_per_day"),
    "a negative budget": ({"limits": {"sends_total": -5}}, "limits.sends_total"),
    "bad quiet hours": ({"limits": {"quiet_hours": "22-7"}}, "quiet hours"),
    "min above max": ({"audience": {"min_purchases": 5, "max_purchases": 2}}, "min_purchases"),
    "unknown trigger": ({"trigger": {"on": "exit"}}, "trigger.on"),
    "unknown key": ({"budget": 3}, "budget"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_campaign_is_refused_with_what_was_wrong_and_nothing_is_stored(rec_client, admin, world, redis_sync,
                                                                            case):
    patch, needle = BAD[case]
    before = {k: v for k, v in redis_dump(redis_sync).items() if b"campaign" in k}
    r = rec_client.put("/v1/campaigns/c-bad", headers=admin, json=campaign(**patch))
    assert_problem(r, 422, needle)
    assert {k: v for k, v in redis_dump(redis_sync).items() if b"campaign" in k} == before


# --- the decision ------------------------------------------------------------------------------------

def test_campaigns_are_tried_in_priority_order_and_each_says_why(rec_client, admin, world, geo_http, redis_sync):
    register(geo_http, "ph-1", "cu-1")
    put(rec_client, admin, "a-other-store", campaign(priority=30, trigger={"on": "dwell", "store_ids": ["s-2"]}))
    put(rec_client, admin, "b-italians", campaign(priority=20, audience={"countries": ["IT"]}))
    put(rec_client, admin, "c-paused", campaign(priority=15, status="paused"))
    put(rec_client, admin, "d-enter-only", campaign(priority=12, trigger={"on": "enter"}))
    put(rec_client, admin, "e-everyone", campaign(priority=10, message=ITALIAN))
    put(rec_client, admin, "f-lower", campaign(priority=5))
    clock = FixedClock(at(12))
    [d] = visit(redis_sync, world, Ranker(), clock, "ph-1", "cu-1", "s-1", "v-1")
    assert [(c.campaign_id, c.outcome, c.reason) for c in d.campaigns] == [
        ("b-italians", "suppressed", "not_in_audience"), ("c-paused", "suppressed", "paused"),
        ("e-everyone", "sent", None), ("f-lower", "suppressed", "outranked")]
    assert (d.outcome, d.campaign_id, d.offer_id) == ("send", "e-everyone", "o-mug")
    # no device locale, no CRM locale: the campaign's default, formatted the Italian way
    assert d.message.locale == "it"
    assert d.message.title == "Tazza da Coop Centro"
    assert d.message.body == "Solo 8,00\xa0€ invece di 10,00\xa0€ (-20%), fino al 30 giu 2026"
    [j] = jobs(redis_sync)
    assert (j.title, j.body, j.data.campaign_id, j.expires_at - j.created_at) == (
        d.message.title, d.message.body, "e-everyone", 900.0)


def test_each_limit_names_its_reason_and_the_next_campaign_is_tried(rec_client, admin, world, geo_http, redis_sync):
    for n in range(1, 5):
        register(geo_http, f"ph-{n}", f"cu-{n}")
    put(rec_client, admin, "capped", campaign(priority=50, limits={"holdout_percent": 0, "per_customer_per_day": 1}))
    put(rec_client, admin, "budget", campaign(priority=40, limits={"holdout_percent": 0, "sends_total": 1}))
    put(rec_client, admin, "fallback", campaign(priority=0))
    settings = world.model_copy(update={"cap_per_day": 10, "store_cooldown_s": 0})
    clock = FixedClock(at(12))
    [d1] = visit(redis_sync, settings, Ranker(), clock, "ph-1", "cu-1", "s-1", "v-1")
    assert d1.campaign_id == "capped"
    clock.advance(60)
    [d2] = visit(redis_sync, settings, Ranker(), clock, "ph-1", "cu-1", "s-2", "v-2")
    assert [(c.campaign_id, c.reason) for c in d2.campaigns] == [("capped", "cap_reached"), ("budget", None),
                                                                  ("fallback", "outranked")]
    clock.advance(60)
    [d3] = visit(redis_sync, settings, Ranker(), clock, "ph-2", "cu-2", "s-1", "v-3")
    assert d3.campaign_id == "capped"
    clock.advance(60)
    [d4] = visit(redis_sync, settings, Ranker(), clock, "ph-2", "cu-2", "s-2", "v-4")
    assert [(c.campaign_id, c.reason) for c in d4.campaigns] == [("capped", "cap_reached"),
                                                                  ("budget", "budget_spent"), ("fallback", None)]
    listed = {c["campaign_id"]: c["spend"] for c in rec_client.get("/v1/campaigns", headers=admin).json()["campaigns"]}
    # (the API runs on today's clock, the decisions on a June day: only the total is comparable)
    assert (listed["budget"]["total"], listed["budget"]["total_budget"]) == (1, 1)
    # a whole week later the daily cap is free again
    clock.advance(DAY)
    [d5] = visit(redis_sync, settings, Ranker(), clock, "ph-1", "cu-1", "s-1", "v-5")
    assert d5.campaign_id == "capped"


@pytest.mark.parametrize("spec, hour, reason", [
    ({"starts_at": at(13)}, 12, "outside_schedule"),
    ({"ends_at": at(12)}, 12, "outside_schedule"),
    ({"hours": "Mo-Fr 08:00-11:00"}, 12, "outside_hours"),
    ({"hours": "Sa-Su 08:00-20:00"}, 12, "outside_hours"),
    ({"hours": "We 11:00-13:00"}, 12, None),
    ({"limits": {"holdout_percent": 0, "quiet_hours": "11:30-12:30"}}, 12, "quiet_hours"),
    ({"audience": {"min_purchases": 1}}, 12, "not_in_audience"),
    ({"audience": {"exclude_customer_ids": ["cu-1"]}}, 12, "not_in_audience"),
    ({"audience": {"include_customer_ids": ["cu-1"], "channels": ["app", "web"]}}, 12, "not_in_audience"),
    ({"audience": {"include_customer_ids": ["cu-1"]}}, 12, None),
    ({"offers": {"offer_ids": ["o-nope"]}}, 12, "no_eligible_offer"),
    ({"offers": {"offer_ids": ["o-tea"]}}, 12, None),
])
def test_a_campaigns_own_checks(rec_client, admin, world, geo_http, redis_sync, spec, hour, reason):
    register(geo_http, "ph-1", "cu-1")
    if "offers" in spec:  # the pool must name real offers of the catalogue
        for o in CATALOGUE:
            r = rec_client.put(f"/v1/offers/{o.offer_id}", headers=admin, json={
                "offer_id": o.offer_id, "title": o.title, "item_ids": list(o.item_ids), "category": "X",
                "price": o.regular_price, "currency": "EUR", "valid_from": at(0, day=1), "valid_to": o.valid_to})
            assert r.status_code in (200, 201), r.text
    if spec.get("offers", {}).get("offer_ids") == ["o-nope"]:
        put(rec_client, admin, "c", campaign(**spec), 422)
        from vicino.services.recommender.adapters.campaign_repository import CampaignRepository
        from vicino.services.recommender.domain.campaigns import CampaignIn
        from vicino.services.runtime.redis_client import open_async

        async def write():  # an offer removed after the campaign was written: the same outcome
            redis = open_async(world.redis_url)
            try:
                await CampaignRepository(redis).write("c", 0, CampaignIn.model_validate(campaign(**spec)), 0.0, 0.0)
            finally:
                await redis.aclose()
        asyncio.run(write())
    else:
        put(rec_client, admin, "c", campaign(**spec))
    [d] = visit(redis_sync, world, Ranker(), FixedClock(at(hour)), "ph-1", "cu-1", "s-1", "v-1")
    [c] = d.campaigns
    assert (c.campaign_id, c.reason) == ("c", reason)
    assert d.reason == reason and (d.outcome == "send") == (reason is None)
    if spec.get("offers", {}).get("offer_ids") == ["o-tea"]:
        assert d.offer_id == "o-tea"  # the pool, not the ranking's best


def test_discover_mode_skips_what_the_customer_bought_lately(rec_client, admin, world, geo_http, redis_sync):
    register(geo_http, "ph-1", "cu-1")
    clock = FixedClock(at(12))
    r = rec_client.post("/v1/interactions", headers=admin, json={"interactions": [
        {"event_id": "p-1", "customer_id": "cu-1", "channel": "store", "type": "purchase", "item_id": "mug",
         "ts": clock.now() - 5 * DAY}]})
    assert r.status_code in (200, 202), r.text
    put(rec_client, admin, "new-things", campaign(offers={"mode": "discover", "discover_days": 30}))
    [d] = visit(redis_sync, world, Ranker(), clock, "ph-1", "cu-1", "s-1", "v-1")
    assert (d.campaign_id, d.offer_id) == ("new-things", "o-tea")


def test_the_holdout_is_per_campaign_and_a_held_out_customer_may_get_the_next_campaign(
        rec_client, admin, world, geo_http, redis_sync):
    a = put(rec_client, admin, "half-a", campaign(priority=2, limits={"holdout_percent": 50}))
    b = put(rec_client, admin, "half-b", campaign(priority=1, limits={"holdout_percent": 50}))
    ca, cb = (decode(x["campaign_id"], _doc(x)) for x in (a, b))
    ids = [f"hc-{n}" for n in range(400)]
    held_a = {i for i in ids if campaign_holdout(i, ca)}
    held_b = {i for i in ids if campaign_holdout(i, cb)}
    assert 160 < len(held_a) < 240 and 160 < len(held_b) < 240
    # a different salt per campaign: about a quarter are held out of both, not a half
    assert 60 < len(held_a & held_b) < 140
    assert held_a == {i for i in ids if campaign_holdout(i, ca)}  # stable
    only_a = sorted(held_a - held_b)[0]
    both = sorted(held_a & held_b)[0]
    register(geo_http, "ph-a", only_a)
    register(geo_http, "ph-b", both)
    clock = FixedClock(at(12))
    [d] = visit(redis_sync, world, Ranker(), clock, "ph-a", only_a, "s-1", "v-1")
    assert [(c.campaign_id, c.outcome) for c in d.campaigns] == [("half-a", "held_out"), ("half-b", "sent")]
    assert (d.outcome, d.campaign_id, d.holdout) == ("send", "half-b", False)
    [d] = visit(redis_sync, world, Ranker(), clock, "ph-b", both, "s-1", "v-2")
    assert [(c.campaign_id, c.outcome) for c in d.campaigns] == [("half-a", "held_out"), ("half-b", "held_out")]
    assert (d.outcome, d.reason, d.campaign_id, d.holdout, d.offer_id) == ("suppress", "holdout", "half-a", True,
                                                                           "o-mug")
    assert [j.data.visit_id for j in jobs(redis_sync)] == ["v-1"]


def _doc(public: dict) -> bytes:
    import orjson

    spec = {k: public[k] for k in ("name", "status", "starts_at", "ends_at", "hours", "timezone", "priority",
                                   "trigger", "audience", "offers", "limits", "message")}
    return orjson.dumps({"revision": public["revision"], "created_at": 0, "updated_at": 0, "spec": spec})


@pytest.mark.parametrize("device_locale, expected_locale, title", [
    ("en-GB", "en", "Tazza at Coop Centro"),
    ("it-CH", "it", "Tazza da Coop Centro"),
    ("fr-FR", "it", "Tazza da Coop Centro"),   # no French template: the campaign's default
])
def test_the_devices_locale_picks_the_template(rec_client, admin, world, geo_http, redis_sync, device_locale,
                                               expected_locale, title):
    r = geo_http.post("/v1/devices", json={"device_id": "ph-1", "customer_id": "cu-1", "platform": "android",
                                           "push_token": "push-ph-1", "timezone": "Europe/Rome",
                                           "locale": device_locale})
    assert r.status_code == 201, r.text
    r = geo_http.put("/v1/customers/cu-1/consent", json={"location": True, "marketing": True,
                                                         "personalisation": True})
    assert r.status_code == 200, r.text
    put(rec_client, admin, "c", campaign(message=ITALIAN))
    [d] = visit(redis_sync, world, Ranker(), FixedClock(at(12)), "ph-1", "cu-1", "s-1", "v-1")
    assert (d.message.locale, d.message.title) == (expected_locale, title)
    if expected_locale == "en":
        assert d.message.body == "Only €8.00 instead of €10.00"


# --- the answers ---------------------------------------------------------------------------------------

def test_why_a_visit_did_and_did_not_get_a_push(rec_client, admin, world, geo_http, redis_sync):
    register(geo_http, "ph-1", "cu-1")
    put(rec_client, admin, "c-it", campaign(message=ITALIAN, limits={"holdout_percent": 0, "per_customer_total": 1}))
    clock = FixedClock(at(12))
    visit(redis_sync, world.model_copy(update={"store_cooldown_s": 0}), Ranker(), clock, "ph-1", "cu-1", "s-1", "v-1")
    clock.advance(60)
    visit(redis_sync, world.model_copy(update={"store_cooldown_s": 0}), Ranker(), clock, "ph-1", "cu-1", "s-2", "v-2")
    sent = rec_client.get("/v1/visits/v-1/decision", headers=admin)
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert (body["customer_id"], body["store"]["name"], body["store"]["brand"]) == ("cu-1", "Coop Centro", "Coop")
    [d] = body["decisions"]
    assert (d["outcome"], d["campaign_id"], d["event"]["type"], d["offer"]["offer_id"]) == ("send", "c-it", "dwell",
                                                                                            "o-mug")
    assert d["campaigns"] == [{"campaign_id": "c-it", "name": "Caffè di giugno", "revision": 1, "outcome": "sent",
                               "reason": None, "offer_id": "o-mug", "score": 0.9}]
    assert d["message"]["title"] == "Tazza da Coop Centro" and d["decided_at"].endswith("Z")
    assert d["delivery"] is None  # no gateway ran in this test: not taken yet
    [d2] = rec_client.get("/v1/visits/v-2/decision", headers=admin).json()["decisions"]
    assert (d2["outcome"], d2["reason"], d2["campaigns"][0]["reason"], d2["message"]) == (
        "suppress", "cap_reached", "cap_reached", None)
    listed = rec_client.get("/v1/customers/cu-1/decisions?limit=1", headers=admin).json()
    assert [x["visit_id"] for x in listed["decisions"]] == ["v-2"] and listed["next_before"]
    older = rec_client.get("/v1/customers/cu-1/decisions", headers=admin,
                           params={"before": listed["next_before"]}).json()
    assert [x["visit_id"] for x in older["decisions"]] == ["v-1"] and older["next_before"] is None
    assert_problem(rec_client.get("/v1/visits/v-unknown/decision", headers=admin), 404, "v-unknown")


@pytest.fixture
def noon(world, admin):
    """The recommender API at noon on a weekday (no quiet hours), with the two offers in its
    catalogue (its real ranking over them: no model, so the catalogue's own order)."""
    from fastapi.testclient import TestClient

    from vicino.services.recommender.app import create_app

    with TestClient(create_app(world, clock=FixedClock(at(12))), raise_server_exceptions=False) as c:
        for o in CATALOGUE:
            r = c.put(f"/v1/offers/{o.offer_id}", headers=admin, json={
                "offer_id": o.offer_id, "title": o.title, "item_ids": list(o.item_ids), "category": "X",
                "price": o.regular_price, "promo_price": o.price, "currency": "EUR", "valid_from": at(0, day=1),
                "valid_to": o.valid_to, "priority": 10 if o.offer_id == "o-mug" else 0})
            assert r.status_code in (200, 201), r.text
        yield c


def test_the_preview_says_what_would_be_sent_and_records_nothing(noon, admin, geo_http, redis_sync):
    rec_client = noon
    register(geo_http, "ph-1", "cu-1")
    put(rec_client, admin, "c-it", campaign(status="draft", message=ITALIAN, audience={"countries": ["IT"]}))
    before = redis_dump(redis_sync)
    r = rec_client.post("/v1/campaigns/c-it/preview", headers=admin, json={"customer_id": "cu-1", "store_id": "s-1"})
    assert r.status_code == 200, r.text
    p = r.json()
    assert (p["status"], p["would_send"], p["reason"], p["message"]) == ("draft", False, "not_in_audience", None)
    put(rec_client, admin, "c-it", campaign(status="draft", message=ITALIAN), 200, '"1"')
    before = redis_dump(redis_sync)
    p = rec_client.post("/v1/campaigns/c-it/preview", headers=admin,
                        json={"customer_id": "cu-1", "store_id": "s-1", "locale": "en"}).json()
    best = rec_client.get("/v1/customers/cu-1/offers", headers=admin,
                          params={"store_id": "s-1", "channel": "app", "k": 1}).json()["offers"][0]
    assert (p["global_reason"], p["would_send"], p["outcome"], p["offer"]["offer_id"]) == (
        None, True, "sent", best["offer_id"])  # the same ranking the app is shown
    o = next(o for o in CATALOGUE if o.offer_id == best["offer_id"])
    assert (p["message"]["locale"], p["message"]["title"], p["message"]["body"]) == (
        "en", f"{o.title} at Coop Centro", f"Only €{o.price:.2f} instead of €{o.regular_price:.2f}")
    assert redis_dump(redis_sync) == before  # nothing recorded, reserved or sent
    assert_problem(rec_client.post("/v1/campaigns/c-it/preview", headers=admin,
                                   json={"customer_id": "cu-1", "store_id": "s-9"}), 404, "s-9")
    assert_problem(rec_client.post("/v1/campaigns/c-it/preview", headers=admin,
                                   json={"customer_id": "cu-1", "store_id": "s-1", "locale": "??"}), 422, "locale")


def test_a_test_send_queues_the_rendered_message_marked_as_a_test(noon, admin, geo_http, redis_sync):
    rec_client = noon
    register(geo_http, "ph-1", "cu-1")
    put(rec_client, admin, "c-it", campaign(status="draft", message=ITALIAN,
                                            trigger={"on": "dwell", "store_ids": ["s-1"]}))
    r = rec_client.post("/v1/campaigns/c-it/test-sends", headers=admin, json={"device_id": "ph-1"})
    assert r.status_code == 202, r.text
    out = r.json()
    [j] = [PushJobV1.from_stream_fields(f) for s in range(16)
           for _, f in redis_sync.xrange(push_jobs_stream_key(s))]
    title = next(o.title for o in CATALOGUE if o.offer_id == out["offer_id"])
    assert (j.job_id, j.data.test, j.data.campaign_id, j.device_id, j.title, out["title"]) == (
        out["job_id"], True, "c-it", "ph-1", f"{title} da Coop Centro", f"{title} da Coop Centro")
    assert decisions(redis_sync) == []  # a test has no decision: never in the KPIs
    assert_problem(rec_client.post("/v1/campaigns/c-it/test-sends", headers=admin, json={"device_id": "ph-none"}),
                   404, "ph-none")


def test_a_campaign_edited_while_a_decision_runs_is_seen_whole(rec_client, admin, world, geo_http, redis_sync):
    register(geo_http, "ph-1", "cu-1")
    put(rec_client, admin, "c-it", campaign(message=ITALIAN))
    ranker = Ranker(pause=threading.Event(), resume=threading.Event())
    clock = FixedClock(at(12))
    publish(redis_sync, event("dwell", "ph-1", "cu-1", "s-1", "v-1", clock.now() - 2))
    worker = threading.Thread(target=drain, args=(world, ranker, clock))
    worker.start()
    assert ranker.pause.wait(10)
    edited = {"templates": {"it": {"title": "NUOVO {offer_title}"}}, "default_locale": "it"}
    put(rec_client, admin, "c-it", campaign(message=edited), 200, '"1"')
    ranker.resume.set()
    worker.join(20)
    [d] = decisions(redis_sync)
    assert (d.campaigns[0].revision, d.message.title) == (1, "Tazza da Coop Centro")


# --- the command line, against a served recommender ------------------------------------------------

def test_the_campaigns_commands_against_a_served_recommender(redis_url, geo_url, geo_http, tmp_path, admin):
    import json

    from typer.testing import CliRunner

    from testbed.processes import served_service
    from tests.conftest import ADMIN_TOKEN
    from vicino.services.cli import app as cli

    assert geo_http.put("/v1/stores/s-1", json=circle_store("s-1", 45.46, 9.19, name="Coop Centro",
                                                            brand="Coop")).status_code in (200, 201)
    register(geo_http, "ph-1", "cu-1")

    with served_service("recommender", redis_url, tmp_path, env={"VICINO_GEO_URL": geo_url,
                                                                 "VICINO_HISTORY_DIR": str(tmp_path / "h")}) as url:
        runner = CliRunner()

        def vicino(*args: str, code: int = 0) -> str:
            run = runner.invoke(cli, ["campaigns", *args, "--url", url, "--token", ADMIN_TOKEN])
            assert run.exit_code == code, run.output
            return run.output

        assert "default campaign built from the VICINO_* settings decides" in vicino("list")
        spec = tmp_path / "caffe.json"
        spec.write_text(json.dumps(campaign(status="draft", message=ITALIAN,
                                            limits={"holdout_percent": 0, "sends_total": 100})))
        assert "caffe: revision 1, draft" in vicino("apply", str(spec))
        assert "caffe: revision 2, draft" in vicino("apply", str(spec))  # re-applied with the ETag it read
        assert "caffe: active (revision 3)" in vicino("resume", "caffe")
        assert "caffe: paused (revision 4)" in vicino("pause", "caffe")
        listed = vicino("list", "--status", "paused")
        assert "caffe" in listed and "0/100" in listed
        shown = json.loads(vicino("show", "caffe"))
        assert (shown["revision"], shown["message"]["default_locale"]) == (4, "it")
        out = vicino("preview", "caffe", "cu-1", "s-1", "--locale", "en")
        assert "caffe (revision 4, paused) for cu-1 at s-1" in out
        assert "cannot go from paused to draft" in vicino("apply", str(spec), code=1)  # the file says draft
        spec.write_text(json.dumps(campaign(status="ended")))
        assert "caffe: revision 5, ended" in vicino("apply", str(spec))
        assert "409" in vicino("resume", "caffe", code=1)  # ended is final
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(campaign(message={"templates": {"it": {"title": "{prize}"}},
                                                    "default_locale": "it"})))
        assert "422" in vicino("apply", str(bad), code=1) and "prize" in vicino("apply", str(bad), code=1)
        bad.write_text("[1, 2]")
        assert "one JSON object" in vicino("apply", str(bad), code=2)
        assert "404" in vicino("why", "v-none", code=1)
