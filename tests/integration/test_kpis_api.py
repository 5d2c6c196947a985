"""GET /v1/kpis on a small known history, recorded the way the system records it (decisions and
receipts in their streams, interactions through the API and in the Parquet log): every figure
derived by hand below, per campaign too, with retention, upselling, NPS and the care channel's
responsiveness. Plus the bad input, and the daily roll-up job."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.contracts.decisions import CampaignOutcomeV1, DecisionV1, decisions_stream_key
from vicino.services.kernel.contracts.deliveries import DeliveryReceiptV1, receipts_stream_key
from vicino.services.kernel.contracts.interactions import InteractionV1, customer_shard
from vicino.services.kernel.jobs import JobContext
from vicino.services.runtime.redis_client import open_async
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS
from vicino.services.recommender.adapters.parquet_log import ParquetLog, interactions_table
from vicino.services.recommender.app import create_app
from vicino.services.recommender.domain.kpis import newcombe_interval
from vicino.services.recommender.jobs import kpi_rollup
from tests.conftest import ADMIN_TOKEN
from tests.support import assert_problem, epoch

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
H = 3600.0
DAY = datetime.now(timezone.utc).date() - timedelta(days=3)  # final: its 24 h window has closed
T = datetime(DAY.year, DAY.month, DAY.day, 10, tzinfo=timezone.utc).timestamp()
FROM, TO = DAY.isoformat(), DAY.isoformat()  # a `to` date includes the day


def offer(items):
    return {"title": "t", "item_ids": items, "category": "CANDLE", "price": 10, "currency": "EUR",
            "valid_from": T - 30 * 86_400, "valid_to": T + 30 * 86_400}


def decision(n, customer, store, at, *, offer_id=None, reason=None, holdout=False, by=None, campaigns=()):
    """`by`: the campaign that sent (or held out); `campaigns`: (campaign_id, outcome, offer_id) tried."""
    send = reason is None
    return DecisionV1(decision_id=f"d{n}", customer_id=customer, device_id=f"{customer}-phone", store_id=store,
                      visit_id=f"v{n}", event_id=f"ev{n}", event_type="dwell", outcome="send" if send else "suppress",
                      reason=reason, offer_id=offer_id, holdout=holdout, job_id=f"j{n}" if send else None,
                      price=10.0 if offer_id else None, ts=at, decided_at=at, campaign_id=by,
                      campaigns=[CampaignOutcomeV1(campaign_id=c, revision=1, outcome=o, offer_id=of)
                                 for c, o, of in campaigns])


def receipt(n, d: DecisionV1, status, at, reason=None):
    return DeliveryReceiptV1(delivery_id=f"dl{n}", customer_id=d.customer_id, device_id=d.device_id,
                             store_id=d.store_id, offer_id=d.offer_id, visit_id=d.visit_id, decision_id=d.decision_id,
                             status=status, reason=reason, ts=at)


# two campaigns: c-it tried first; on d2 it held t2 out and c-en, tried next, sent
D = [decision(1, "t1", "s1", T, offer_id="o1", by="c-it", campaigns=[("c-it", "sent", "o1")]),
     decision(2, "t2", "s2", T + 1 * H, offer_id="o1", by="c-en",
              campaigns=[("c-it", "held_out", "o1"), ("c-en", "sent", "o1")]),
     decision(3, "t3", "s1", T + 2 * H, offer_id="o2", by="c-en", campaigns=[("c-en", "sent", "o2")]),
     decision(4, "h1", "s1", T + 3 * H, offer_id="o1", reason="holdout", holdout=True, by="c-it",
              campaigns=[("c-it", "held_out", "o1")]),
     decision(5, "h2", "s2", T + 4 * H, offer_id="o2", reason="holdout", holdout=True, by="c-en",
              campaigns=[("c-en", "held_out", "o2")]),
     decision(6, "t1", "s1", T + 5 * H, reason="quiet_hours")]
R = [receipt(1, D[0], "queued", T), receipt(1, D[0], "sent", T + 1), receipt(1, D[0], "opened", T + 60),
     receipt(2, D[1], "queued", T + H), receipt(2, D[1], "sent", T + H + 1),
     receipt(3, D[2], "queued", T + 2 * H), receipt(3, D[2], "expired", T + 2 * H + 900, "ttl")]


def interaction(event_id, customer, type_, channel, at, **kw):
    return {"event_id": event_id, "customer_id": customer, "type": type_, "channel": channel, "ts": at, **kw}


# through the API (hot history and the interaction stream, not exported yet)
VIA_API = [interaction("p1", "t1", "purchase", "store", T + 1 * H, item_id="i1", store_id="s1", value=10.0,
                       quantity=2),
           interaction("p2", "t1", "purchase", "web", T + 5 * H, item_id="i9", value=3.0),
           interaction("p3", "t3", "purchase", "web", T + 30 * H, item_id="i2", value=4.0),   # outside 24 h
           interaction("p4", "h1", "purchase", "store", T + 4 * H, item_id="i1", store_id="s3", value=5.0),
           interaction("sv1", "t1", "survey", "app", T + 6 * H, score=10),
           interaction("sv3", "t1", "survey", "app", T + 8 * H, score=8),                   # t1's latest
           interaction("sv4", "h1", "survey", "store", T + 26 * H, score=9),                # the next day
           interaction("sr1", "t2", "support_reply", "call_center", T + 3 * H, reply_to="sc1")]
# already in the Parquet log (exported)
IN_LOG = [interaction("r1", "t2", "offer_redeem", "store", T + 2 * H, offer_id="o1", store_id="s2"),
          interaction("p5", "t2", "purchase", "app", T + 3 * H, item_id="i1", value=7.0),
          interaction("sv2", "h2", "survey", "email", T + 7 * H, score=3),
          interaction("sc1", "t2", "support_contact", "call_center", T + 2 * H),
          interaction("sc2", "h2", "support_contact", "email", T + 9 * H)]                 # never answered


def seed_history(redis_sync, shards: int, history_dir: str, http) -> None:
    """Writes the history above as the system records it; `http` is a client of the recommender
    (a TestClient or an httpx.Client with its base URL)."""
    for d in D:
        redis_sync.xadd(decisions_stream_key(customer_shard(d.customer_id, shards)), d.to_stream_fields(),
                        id=f"{int(d.decided_at * 1000)}-{d.decision_id[1:]}")
    for i, r in enumerate(R):
        redis_sync.xadd(receipts_stream_key(customer_shard(r.customer_id, shards)), r.to_stream_fields(),
                        id=f"{int(r.ts * 1000)}-{i}")
    rows = [InteractionV1(**i, received_at=i["ts"]) for i in IN_LOG]
    ParquetLog(history_dir).write_partitioned(INTERACTIONS, interactions_table(rows), "kpi-test")
    for oid, items in (("o1", ["i1"]), ("o2", ["i2"])):
        assert http.put(f"/v1/offers/{oid}", headers=ADMIN, json=offer(items)).status_code == 201
    r = http.post("/v1/interactions", headers=ADMIN, json=VIA_API)
    assert r.status_code == 200 and r.json()["accepted"] == len(VIA_API), r.text


def roll_up(redis_url: str, settings) -> dict:
    async def main():
        client = open_async(redis_url)
        try:
            return await kpi_rollup(JobContext(client), settings)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def kpi_client(rec_settings, redis_sync):
    settings = rec_settings.model_copy(update={"attribution_window_h": 24.0})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        seed_history(redis_sync, settings.customer_shards, settings.history_dir, c)
        yield c, settings


def kpis(c, **params):
    r = c.get("/v1/kpis", headers=ADMIN, params={"from": FROM, "to": TO, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_every_figure_of_a_known_history(kpi_client):
    c, _ = kpi_client
    k = kpis(c)
    assert {b: epoch(t) for b, t in k["period"].items()} == {"from": T - 10 * H, "to": T + 14 * H}
    assert k["attribution_window_s"] == 24 * H
    assert k["empty"] is False and k["empty_reason"] is None
    # d1..d6: d1-d3 sent; d4, d5 holdout; d6 quiet hours
    assert {x: k["decisions"][x] for x in ("total", "sent", "suppressed")} == {"total": 6, "sent": 3, "suppressed": 3}
    assert {r: n for r, n in k["decisions"]["suppressed_by_reason"].items() if n} == {"holdout": 2, "quiet_hours": 1}
    # dl1 sent and opened, dl2 sent, dl3 expired
    d = k["deliveries"]
    assert (d["sent"], d["opened"], d["open_rate"], d["expired"], d["failed"], d["token_invalid"], d["suppressed"],
            d["pending"]) == (2, 1, 0.5, 1, 0, 0, 0, 0)
    # d1: p1 (i1, in s1, the store that triggered it): store. d2: r1 redeemed at s2 (its store): store; p5 in
    # the app: online. d3: p3 came 28 h after: none. Revenue: p1 10 (store), p5 7 (online); r1 carries none.
    conv = k["conversions"]
    assert conv["store"] == {"conversions": 2, "rate": pytest.approx(2 / 3), "revenue": 10.0}
    assert conv["online"] == {"conversions": 1, "rate": pytest.approx(1 / 3), "revenue": 7.0}
    assert conv["anywhere"] == {"conversions": 2, "rate": pytest.approx(2 / 3), "revenue": 17.0}
    assert k["funnel"] == {"sent": 2, "opened": 1, "redeemed": 1, "purchased": 2}
    # treated t1, t2 converted of t1, t2, t3; holdout h1 (p4: i1 at another store, 1 h after d4) of h1, h2
    u = k["uplift"]
    assert u["treated"] == {"customers": 3, "converted": 2, "rate": pytest.approx(2 / 3)}
    assert u["holdout"] == {"customers": 2, "converted": 1, "rate": 0.5}
    assert u["difference"] == pytest.approx(1 / 6) and u["relative"] == pytest.approx(1 / 3)
    assert u["ci95"] == pytest.approx(list(newcombe_interval(2, 3, 1, 2)))
    assert u["ci95"][0] < 0 < u["ci95"][1]  # five customers prove nothing, and the interval says so
    # t1 bought again (p2, 4 h after p1); t2's p5 follows r1; h1 bought nothing more
    assert k["repurchase"]["treated"] == {"customers": 2, "repurchased": 2, "rate": 1.0}
    assert k["repurchase"]["holdout"] == {"customers": 1, "repurchased": 0, "rate": 0.0}
    assert k["by_store"] == [
        {"store_id": "s1", "decisions": 4, "sent": 2, "conversions": {"store": 1, "online": 0, "anywhere": 1},
         "revenue": 10.0},
        {"store_id": "s2", "decisions": 2, "sent": 1, "conversions": {"store": 1, "online": 1, "anywhere": 1},
         "revenue": 7.0}]
    # c-en: sent d2 (t2: r1 at s2, its store, and p5 in the app: 7) and d3 (t3: nothing in 24 h), held out d5 (h2:
    # nothing). c-it: sent d1 (t1: p1 at s1, 10), held out d2 (t2: r1 and p5 are o1's) and d4 (h1: p4, o1's item)
    assert k["by_campaign"] == [
        {"campaign_id": "c-en", "decisions": 3, "sent": 2, "held_out": 1,
         "conversions": {"store": 1, "online": 1, "anywhere": 1}, "revenue": 7.0,
         "uplift": {"treated": {"customers": 2, "converted": 1, "rate": 0.5},
                    "holdout": {"customers": 1, "converted": 0, "rate": 0.0},
                    "difference": 0.5, "ci95": pytest.approx(list(newcombe_interval(1, 2, 0, 1))), "note": None}},
        {"campaign_id": "c-it", "decisions": 3, "sent": 1, "held_out": 2,
         "conversions": {"store": 1, "online": 0, "anywhere": 1}, "revenue": 10.0,
         "uplift": {"treated": {"customers": 1, "converted": 1, "rate": 1.0},
                    "holdout": {"customers": 2, "converted": 2, "rate": 1.0},
                    "difference": 0.0, "ci95": pytest.approx(list(newcombe_interval(1, 1, 2, 2))), "note": None}}]
    # active on the day: t1 t2 h1 h2 by their interactions, and t1 t2 t3 h1 h2 by their visits = 5; again the next
    # day (it has ended): t3 (p3) and h1 (sv4). Treated t1 t2 t3: 1/3; holdout h1 h2: 1/2
    assert k["retention"] == {"active": {"customers": 5, "retained": 2, "rate": 0.4},
                              "treated": {"customers": 3, "retained": 1, "rate": pytest.approx(1 / 3)},
                              "holdout": {"customers": 2, "retained": 1, "rate": 0.5},
                              "difference": pytest.approx(-1 / 6),
                              "ci95": pytest.approx(list(newcombe_interval(1, 3, 1, 2))),
                              "method": "newcombe_hybrid_score", "note": None}
    # baskets in the 24 h after an exposure: treated p1 (10, 2 items), p2 (3), p5 (7); holdout p4 (5)
    assert k["upselling"] == {
        "treated": {"baskets": 3, "customers": 2, "value_per_basket": pytest.approx(20 / 3),
                    "items_per_basket": pytest.approx(4 / 3)},
        "holdout": {"baskets": 1, "customers": 1, "value_per_basket": 5.0, "items_per_basket": 1.0},
        "difference": {"value_per_basket": pytest.approx(5 / 3), "items_per_basket": pytest.approx(1 / 3)},
        "note": None}
    # latest surveys of the day: t1 8 (sv3, passive; sv1 is older), h2 3 (sv2 from the log, detractor); sv4 is the
    # next day's. 100 (0 - 1) / 2 = -50
    assert k["nps"] == {"n": 2, "promoters": 0, "passives": 1, "detractors": 1, "nps": -50.0, "by_channel": {
        "app": {"n": 1, "promoters": 0, "passives": 1, "detractors": 0, "nps": 0.0},
        "email": {"n": 1, "promoters": 0, "passives": 0, "detractors": 1, "nps": -100.0}}}
    # sc1 (in the log) answered by sr1 (through the API) 1 h later; sc2 never
    assert k["responsiveness"] == {
        "contacts": 2, "answered": 1, "unanswered": 1, "within_24h": 1, "share_within_24h": 0.5,
        "median_s": 3600.0, "p90_s": 3600.0, "by_channel": {
            "call_center": {"contacts": 1, "answered": 1, "unanswered": 0, "within_24h": 1, "share_within_24h": 1.0,
                            "median_s": 3600.0, "p90_s": 3600.0},
            "email": {"contacts": 1, "answered": 0, "unanswered": 1, "within_24h": 0, "share_within_24h": 0.0,
                      "median_s": None, "p90_s": None}}}
    assert k["unavailable"] == {}


def test_filters_and_window(kpi_client):
    c, _ = kpi_client
    s2 = kpis(c, store_id="s2")
    assert s2["filters"] == {"store_id": "s2", "offer_id": None, "campaign_id": None}
    assert (s2["decisions"]["total"], s2["decisions"]["sent"], s2["conversions"]["anywhere"]["conversions"]) == (2, 1, 1)
    assert s2["uplift"]["treated"]["customers"] == 1 and s2["uplift"]["holdout"]["customers"] == 1
    o2 = kpis(c, offer_id="o2")
    assert (o2["decisions"]["total"], o2["conversions"]["anywhere"]["conversions"]) == (2, 0)
    assert o2["uplift"]["difference"] == 0.0
    # a 48 h window takes in p3 (28 h after d3)
    wide = kpis(c, window_h=48)
    assert wide["conversions"]["anywhere"]["conversions"] == 3 and wide["conversions"]["online"]["revenue"] == 11.0


def test_one_campaign_against_its_own_holdout(kpi_client):
    c, _ = kpi_client
    en = kpis(c, campaign_id="c-en")
    assert en["filters"] == {"store_id": None, "offer_id": None, "campaign_id": "c-en"}
    assert {x: en["decisions"][x] for x in ("total", "sent", "suppressed")} == {"total": 3, "sent": 2, "suppressed": 1}
    assert en["decisions"]["suppressed_by_reason"]["holdout"] == 1
    # c-en's pushes: dl2 sent, dl3 expired (dl1 is c-it's)
    assert (en["deliveries"]["sent"], en["deliveries"]["expired"], en["deliveries"]["opened"]) == (1, 1, 0)
    assert en["conversions"]["anywhere"] == {"conversions": 1, "rate": 0.5, "revenue": 7.0}
    assert en["funnel"] == {"sent": 1, "opened": 0, "redeemed": 1, "purchased": 1}
    assert en["uplift"]["difference"] == 0.5 and en["uplift"]["relative"] is None
    assert "relative uplift is undefined" in en["uplift"]["note"]
    assert [x["campaign_id"] for x in en["by_campaign"]] == ["c-en"]
    # c-it held t2 out on d2, whatever c-en then sent: t2 is in c-it's holdout
    it = kpis(c, campaign_id="c-it")
    assert it["uplift"]["holdout"] == {"customers": 2, "converted": 2, "rate": 1.0}
    assert it["deliveries"]["sent"] == 1 and it["deliveries"]["opened"] == 1
    # a campaign with no decision in the period is an empty report, not an error
    none = kpis(c, campaign_id="c-none")
    assert none["empty"] is True and none["empty_reason"] == "no decisions in the period for this campaign"
    assert none["by_campaign"] == [] and none["decisions"]["total"] == 0


def test_care_interactions_are_kept_with_their_score_and_reply(kpi_client):
    c, _ = kpi_client
    hist = c.get("/v1/customers/t1/history", headers=ADMIN, params={"limit": 100}).json()["interactions"]
    assert {h["event_id"]: h.get("score") for h in hist if h["type"] == "survey"} == {"sv1": 10, "sv3": 8}
    hist = c.get("/v1/customers/t2/history", headers=ADMIN, params={"limit": 100}).json()["interactions"]
    assert [(h["event_id"], h["reply_to"]) for h in hist if h["type"] == "support_reply"] == [("sr1", "sc1")]
    r = c.post("/v1/interactions", headers=ADMIN, json=[
        interaction("bad-sv", "t1", "survey", "app", T, score=10.5),
        interaction("bad-sr", "t1", "support_reply", "store", T, reply_to="sc1"),
        interaction("bad-p", "t1", "purchase", "web", T, item_id="i1", score=3)])
    assert r.status_code == 200 and r.json()["accepted"] == 0
    assert [(x["event_id"], x["reason"], x["detail"].split(":")[0]) for x in r.json()["rejected"]] == [
        ("bad-sv", "invalid", "score"), ("bad-sr", "invalid", "channel"), ("bad-p", "invalid", "score")]


def test_retention_waits_for_the_next_period(kpi_client):
    c, _ = kpi_client
    k = kpis(c, **{"from": (DAY + timedelta(days=2)).isoformat(), "to": datetime.now(timezone.utc).date().isoformat()})
    assert k["retention"] is None and "has ended" in k["unavailable"]["retention"]


def test_an_empty_period_is_zeros_with_a_marker(kpi_client):
    c, _ = kpi_client
    week_before = (DAY - timedelta(days=7)).isoformat()
    k = kpis(c, **{"from": week_before, "to": week_before})
    assert k["empty"] is True and "no decisions" in k["empty_reason"]
    assert k["decisions"]["total"] == 0 and k["deliveries"]["sent"] == 0 and k["deliveries"]["open_rate"] is None
    assert k["conversions"]["anywhere"] == {"conversions": 0, "rate": None, "revenue": 0.0}
    assert k["uplift"]["difference"] is None and k["uplift"]["ci95"] is None and k["by_store"] == []
    # no survey, contact or purchase after a push that week: null with a reason, never zeros
    assert k["by_campaign"] == [] and k["upselling"] is None and k["nps"] is None and k["responsiveness"] is None
    assert set(k["unavailable"]) >= {"upselling", "nps", "responsiveness"}


def test_bad_input(kpi_client):
    c, _ = kpi_client
    later = (DAY + timedelta(days=1)).isoformat()
    assert_problem(c.get("/v1/kpis", params={"from": FROM, "to": TO}), 401)
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": later, "to": FROM}), 422, "must be before")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": "2026-11-26T10:00:00Z",
                                                           "to": "2026-11-26T10:00:00Z"}), 422, "must be before")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": "yesterday"}), 422, "from")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": "2026-11-26T10:00:00"}), 422, "UTC offset")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": "2026-13-01"}), 422, "not a date")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": "2020-01-01", "to": "2026-01-01"}), 422,
                   "at most 400 days")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": FROM, "to": TO, "store_id": "nowhere"}), 404,
                   "no store 'nowhere'")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"from": FROM, "to": TO, "offer_id": "o-none"}), 404,
                   "no offer 'o-none'")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"window_h": 0}), 422, "window_h")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"store_id": "bad id!"}), 422, "store_id")
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params={"campaign_id": "bad id!"}), 422, "campaign_id")


def test_daily_rollup_keeps_the_days_whose_window_closed(kpi_client, redis_url):
    c, settings = kpi_client
    assert c.get("/v1/kpis/daily", headers=ADMIN, params={"from": FROM, "to": TO}).json()["empty"] is True

    summary = roll_up(redis_url, settings)
    assert FROM in summary["rolled_up"]
    today = datetime.now(timezone.utc).date()
    assert today.isoformat() not in summary["rolled_up"]  # its window is still open
    daily = c.get("/v1/kpis/daily", headers=ADMIN, params={"from": FROM, "to": TO}).json()
    assert [d["date"] for d in daily["days"]] == [FROM]
    live = kpis(c)
    live.pop("notes")
    assert daily["days"][0]["report"] == live  # its period as RFC 3339, like the live report's
    assert abs(epoch(daily["days"][0]["rolled_at"]) - time.time()) < 60
    assert roll_up(redis_url, settings)["rolled_up"] == []  # done once


@pytest.mark.parametrize("params,needle", [({"to": "9999-12-31"}, "not a date"), ({"from": "0001-01-01"}, "400 days"),
                                           ({"from": "1e12"}, "from"), ({"window_h": "nan"}, "window_h"),
                                           ({"window_h": "721"}, "window_h"), ({"from": "2026-02-30"}, "not a date")])
def test_odd_periods_are_422_not_500(kpi_client, params, needle):
    c, _ = kpi_client
    assert_problem(c.get("/v1/kpis", headers=ADMIN, params=params), 422, needle)


def test_a_customer_merged_after_the_push_converts_under_the_survivor(kpi_client, redis_sync):
    """The decision names the customer of the time; the till purchase, after a merge, names the
    survivor (the merge pointer and aliases are the recommender's, written here as it writes them)."""
    from vicino.services.kernel.contracts.interactions import merged_into_key
    from vicino.services.recommender.adapters.redis_keys import CustomerKeys

    c, settings = kpi_client
    shards = settings.customer_shards
    day = (DAY - timedelta(days=1)).isoformat()
    at = T - 86_400
    d = decision(90, "m-old", "s1", at, offer_id="o1")
    redis_sync.xadd(decisions_stream_key(customer_shard("m-old", shards)), d.to_stream_fields(),
                    id=f"{int(at * 1000)}-0")
    redis_sync.set(merged_into_key("m-old", shards), "m-new")
    redis_sync.sadd(CustomerKeys("m-new", shards).aliases, "m-old")
    r = c.post("/v1/interactions", headers=ADMIN, json=[
        interaction("m-p1", "m-new", "purchase", "store", at + H, item_id="i1", store_id="s1", value=8.0)])
    assert r.json()["accepted"] == 1, r.text
    k = kpis(c, **{"from": day, "to": day})
    assert k["conversions"]["store"] == {"conversions": 1, "rate": 1.0, "revenue": 8.0}
    assert k["uplift"]["treated"] == {"customers": 1, "converted": 1, "rate": 1.0}
