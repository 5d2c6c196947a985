"""GET /v1/kpis on a small known history, recorded the way the system records it (decisions and
receipts in their streams, interactions through the API and in the Parquet log): every figure
derived by hand below. Plus the bad input, and the daily roll-up job."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.contracts.decisions import DecisionV1, decisions_stream_key
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


def decision(n, customer, store, at, *, offer_id=None, reason=None, holdout=False):
    send = reason is None
    return DecisionV1(decision_id=f"d{n}", customer_id=customer, device_id=f"{customer}-phone", store_id=store,
                      visit_id=f"v{n}", event_id=f"ev{n}", event_type="dwell", outcome="send" if send else "suppress",
                      reason=reason, offer_id=offer_id, holdout=holdout, job_id=f"j{n}" if send else None,
                      price=10.0 if offer_id else None, ts=at, decided_at=at)


def receipt(n, d: DecisionV1, status, at, reason=None):
    return DeliveryReceiptV1(delivery_id=f"dl{n}", customer_id=d.customer_id, device_id=d.device_id,
                             store_id=d.store_id, offer_id=d.offer_id, visit_id=d.visit_id, decision_id=d.decision_id,
                             status=status, reason=reason, ts=at)


D = [decision(1, "t1", "s1", T, offer_id="o1"),
     decision(2, "t2", "s2", T + 1 * H, offer_id="o1"),
     decision(3, "t3", "s1", T + 2 * H, offer_id="o2"),
     decision(4, "h1", "s1", T + 3 * H, offer_id="o1", reason="holdout", holdout=True),
     decision(5, "h2", "s2", T + 4 * H, offer_id="o2", reason="holdout", holdout=True),
     decision(6, "t1", "s1", T + 5 * H, reason="quiet_hours")]
R = [receipt(1, D[0], "queued", T), receipt(1, D[0], "sent", T + 1), receipt(1, D[0], "opened", T + 60),
     receipt(2, D[1], "queued", T + H), receipt(2, D[1], "sent", T + H + 1),
     receipt(3, D[2], "queued", T + 2 * H), receipt(3, D[2], "expired", T + 2 * H + 900, "ttl")]


def interaction(event_id, customer, type_, channel, at, **kw):
    return {"event_id": event_id, "customer_id": customer, "type": type_, "channel": channel, "ts": at, **kw}


# through the API (hot history and the interaction stream, not exported yet)
VIA_API = [interaction("p1", "t1", "purchase", "store", T + 1 * H, item_id="i1", store_id="s1", value=10.0),
           interaction("p2", "t1", "purchase", "web", T + 5 * H, item_id="i9", value=3.0),
           interaction("p3", "t3", "purchase", "web", T + 30 * H, item_id="i2", value=4.0),   # outside 24 h
           interaction("p4", "h1", "purchase", "store", T + 4 * H, item_id="i1", store_id="s3", value=5.0)]
# already in the Parquet log (exported)
IN_LOG = [interaction("r1", "t2", "offer_redeem", "store", T + 2 * H, offer_id="o1", store_id="s2"),
          interaction("p5", "t2", "purchase", "app", T + 3 * H, item_id="i1", value=7.0)]


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


def test_filters_and_window(kpi_client):
    c, _ = kpi_client
    s2 = kpis(c, store_id="s2")
    assert s2["filters"] == {"store_id": "s2", "offer_id": None}
    assert (s2["decisions"]["total"], s2["decisions"]["sent"], s2["conversions"]["anywhere"]["conversions"]) == (2, 1, 1)
    assert s2["uplift"]["treated"]["customers"] == 1 and s2["uplift"]["holdout"]["customers"] == 1
    o2 = kpis(c, offer_id="o2")
    assert (o2["decisions"]["total"], o2["conversions"]["anywhere"]["conversions"]) == (2, 0)
    assert o2["uplift"]["difference"] == 0.0
    # a 48 h window takes in p3 (28 h after d3)
    wide = kpis(c, window_h=48)
    assert wide["conversions"]["anywhere"]["conversions"] == 3 and wide["conversions"]["online"]["revenue"] == 11.0


def test_an_empty_period_is_zeros_with_a_marker(kpi_client):
    c, _ = kpi_client
    week_before = (DAY - timedelta(days=7)).isoformat()
    k = kpis(c, **{"from": week_before, "to": week_before})
    assert k["empty"] is True and "no decisions" in k["empty_reason"]
    assert k["decisions"]["total"] == 0 and k["deliveries"]["sent"] == 0 and k["deliveries"]["open_rate"] is None
    assert k["conversions"]["anywhere"] == {"conversions": 0, "rate": None, "revenue": 0.0}
    assert k["uplift"]["difference"] is None and k["uplift"]["ci95"] is None and k["by_store"] == []


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
