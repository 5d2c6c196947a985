"""The KPI report: every figure of a small hand-built history (expected values derived by hand,
in the comments), Newcombe's published interval examples, period boundaries, filters, and the
reports with nothing to divide by."""
from __future__ import annotations

import json

import pytest

from vicino.services.kernel.contracts.decisions import REASONS, CampaignOutcomeV1, DecisionV1
from vicino.services.kernel.contracts.deliveries import DeliveryReceiptV1
from vicino.services.kernel.contracts.interactions import InteractionV1
from vicino.services.recommender.domain.kpis import (Z95, ConversionEvent, compute_kpis, newcombe_interval,
                                              wilson_interval)

PERIOD = (10_000.0, 20_000.0)
WINDOW = 1_000.0
OFFER_ITEMS = {"o1": ["i1", "i2"], "o2": ["i3"]}  # i9 is in no offer


def decision(decision_id, customer, store, decided_at, *, offer=None, reason=None, holdout=False):
    """A sent decision when `reason` is None, else a suppression; `holdout` follows a holdout reason."""
    holdout = holdout or reason == "holdout"
    return DecisionV1(decision_id=decision_id, customer_id=customer, device_id=f"dev-{customer}", store_id=store,
                      visit_id=f"v-{decision_id}", event_id=f"g-{decision_id}", event_type="enter",
                      outcome="send" if reason is None else "suppress", reason=reason, offer_id=offer,
                      job_id=f"job-{decision_id}" if reason is None else None, holdout=holdout,
                      ts=decided_at - 1, decided_at=decided_at)


def receipt(d: DecisionV1, delivery_id, status, ts, reason=None):
    return DeliveryReceiptV1(delivery_id=delivery_id, customer_id=d.customer_id, device_id=d.device_id,
                             store_id=d.store_id, offer_id=d.offer_id, visit_id=d.visit_id,
                             decision_id=d.decision_id, status=status, reason=reason, ts=ts)


def purchase(event_id, customer, channel, ts, item, value=None, store=None):
    return ConversionEvent(event_id, customer, "purchase", channel, ts, item_id=item, store_id=store, value=value)


def redeem(event_id, customer, channel, ts, offer, store=None):
    return ConversionEvent(event_id, customer, "offer_redeem", channel, ts, offer_id=offer, store_id=store)


# --- the hand-built history ----------------------------------------------------------------
# Treated customers t1..t6, holdout customers h1..h4, stores s1..s3, period [10 000, 20 000), window 1 000 s.
D = {d.decision_id: d for d in [
    decision("d01", "t1", "s1", 11_000, offer="o1"),
    decision("d02", "t1", "s2", 11_400, offer="o1"),     # t1 again, same offer: the last touch
    decision("d03", "t2", "s1", 11_000, offer="o1"),
    decision("d04", "t3", "s2", 12_000, offer="o2"),
    decision("d05", "t4", "s2", 12_000, offer="o2"),
    decision("d06", "t5", "s3", 13_000, offer="o1"),
    decision("d07", "t6", "s3", 13_000, offer="o2"),     # no receipt at all: pending
    decision("d18", "t6", "s1", 15_000, offer="o2"),     # queued only: pending
    decision("d19", "t3", "s3", 16_000, offer="o1"),     # failed
    decision("d08", "h1", "s1", 11_000, offer="o1", reason="holdout"),
    decision("d09", "h2", "s2", 12_000, offer="o2", reason="holdout"),
    decision("d10", "h3", "s3", 13_000, offer="o1", reason="holdout"),
    decision("d11", "h4", "s1", 14_000, offer="o2", reason="holdout"),
    decision("d12", "t2", "s2", 11_500, reason="daily_cap"),
    decision("d13", "t5", "s1", 15_000, reason="quiet_hours"),
    decision("d14", "x1", "s3", 16_000, reason="no_marketing_consent"),
    decision("d15", "h1", "s1", 11_200, reason="store_cooldown", holdout=True),
    # over-read by the caller, outside the period: ignored with their receipts and matches
    decision("d16", "t2", "s1", 9_999, offer="o1"),
    decision("d17", "t3", "s2", 20_000, offer="o2"),
]}

RECEIPTS = [
    receipt(D["d01"], "v01", "queued", 11_001), receipt(D["d01"], "v01", "sent", 11_002),
    receipt(D["d01"], "v01", "opened", 11_050),
    receipt(D["d02"], "v02", "queued", 11_401), receipt(D["d02"], "v02", "sent", 11_402),
    receipt(D["d03"], "v03", "queued", 11_001), receipt(D["d03"], "v03", "sent", 11_002),
    receipt(D["d03"], "v03", "sent", 11_002),     # redelivered receipt: counts once
    receipt(D["d03"], "v03", "opened", 11_300),
    receipt(D["d04"], "v04", "queued", 12_001), receipt(D["d04"], "v04", "suppressed", 12_002, "visit_ended"),
    receipt(D["d05"], "v05", "queued", 12_001), receipt(D["d05"], "v05", "token_invalid", 12_002, "Unregistered"),
    receipt(D["d06"], "v06", "queued", 13_001),
    receipt(D["d06"], "v06", "expired", 13_600, "the push expired before it could be sent"),
    receipt(D["d18"], "v18", "queued", 15_001),
    receipt(D["d19"], "v19", "queued", 16_001), receipt(D["d19"], "v19", "failed", 16_100, "HTTP 500"),
    receipt(D["d16"], "v16", "queued", 10_000), receipt(D["d16"], "v16", "sent", 10_001),  # d16 not kept
]

EVENTS = [
    # t1: matches d01 (11 000, 12 000] and d02 (11 400, 12 400]; last touch d02 (s2), bought in s1 → anywhere only
    purchase("e01", "t1", "store", 11_500, "i1", 20.0, store="s1"),
    purchase("e02", "t1", "web", 12_000, "i9", 8.0),               # not an offer item; t1's repurchase
    # t2: online purchase of an o1 item → d03, online + anywhere; the duplicate must not double its revenue
    purchase("e03", "t2", "web", 11_600, "i2", 30.0),
    purchase("e03", "t2", "web", 11_600, "i2", 30.0),
    purchase("e04", "t2", "web", 10_500, "i1", 5.0),               # would match d16, which is out of the period
    purchase("e05", "t2", "store", 13_000, "i9", 4.0, store="s1"),  # after 11 600 + 1 000: no repurchase
    # t3: o2's item bought at another store (s3, pushed at s2) → d04, anywhere only
    purchase("e06", "t3", "store", 12_200, "i3", 15.0, store="s3"),
    # t4: redemption and the till's purchase in the triggering store → d05, store + anywhere, revenue 12
    redeem("e07", "t4", "store", 12_300, "o2", store="s2"),
    purchase("e08", "t4", "store", 12_300, "i3", 12.0, store="s2"),
    # t5: before the decision, and after the window: neither matches d06
    purchase("e09", "t5", "store", 12_900, "i1", 9.0, store="s3"),
    purchase("e10", "t5", "store", 14_500, "i1", 9.0, store="s3"),
    # t6: an item of no offer, and a return of o2's item: neither matches
    purchase("e11", "t6", "app", 13_100, "i9", 3.0),
    ConversionEvent("e12", "t6", "return", "store", 13_200, item_id="i3", store_id="s3", value=-12.0),
    # holdout
    purchase("e13", "h1", "store", 11_300, "i2", 25.0, store="s1"),   # d08 → converted (store)
    purchase("e14", "h1", "web", 12_300, "i1", 6.0),                  # = 11 300 + 1 000: h1's repurchase
    purchase("e15", "h2", "web", 13_000, "i3", 10.0),                 # = d09 + window, inclusive → converted
    purchase("e16", "h3", "store", 14_500, "i1", 7.0, store="s3"),    # after d10's window
]


def report(**kw):
    args = dict(offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)
    return compute_kpis(list(D.values()), RECEIPTS, EVENTS, **{**args, **kw})


def test_hand_built_history_every_figure():
    r = report()
    assert json.loads(json.dumps(r)) == r   # plain JSON values
    assert r["period"] == {"from": 10_000.0, "to": 20_000.0}
    assert r["filters"] == {"store_id": None, "offer_id": None, "campaign_id": None}
    assert r["attribution_window_s"] == 1_000.0
    assert r["empty"] is False and r["empty_reason"] is None

    # kept: d01-d15, d18, d19 = 17; sent d01-d07, d18, d19 = 9; suppressed d08-d15 = 8
    assert r["decisions"] == {"total": 17, "sent": 9, "suppressed": 8, "suppressed_by_reason": {
        **dict.fromkeys(REASONS, 0), "no_marketing_consent": 1, "quiet_hours": 1, "daily_cap": 1,
        "store_cooldown": 1, "holdout": 4}}
    assert list(r["decisions"]["suppressed_by_reason"]) == list(REASONS)   # every reason, in the contract's order

    # deliveries v01-v06, v18, v19 (v16 dropped); sent v01 v02 v03; opened v01 v03;
    # v04 suppressed, v05 token_invalid, v06 expired, v19 failed; pending d07 (no receipt), d18 (queued)
    assert r["deliveries"] == {"total": 8, "sent": 3, "opened": 2, "open_rate": pytest.approx(2 / 3),
                               "failed": 1, "expired": 1, "token_invalid": 1, "suppressed": 1,
                               "suppressed_by_reason": {"visit_ended": 1}, "pending": 2}

    # attributed: d02 ← e01 (anywhere, 20); d03 ← e03 (online, 30); d04 ← e06 (anywhere, 15);
    # d05 ← e07 + e08 (store, 12). Rates over 9 sent decisions.
    assert r["conversions"] == {
        "store": {"conversions": 1, "rate": pytest.approx(1 / 9), "revenue": 12.0},
        "online": {"conversions": 1, "rate": pytest.approx(1 / 9), "revenue": 30.0},
        "anywhere": {"conversions": 4, "rate": pytest.approx(4 / 9), "revenue": 77.0},   # 20 + 30 + 15 + 12
    }
    # redeemed: d05; purchased: d02 d03 d04 d05
    assert r["funnel"] == {"sent": 3, "opened": 2, "redeemed": 1, "purchased": 4}

    # treated customers t1-t6, converted t1 t2 t3 t4 → 4/6; holdout h1-h4, converted h1 h2 → 2/4.
    # Wilson 4/6 = (0.29999, 0.90323), 2/4 = (0.15004, 0.84996); d = 1/6;
    # lo = 1/6 - sqrt((2/3 - 0.29999)² + (0.84996 - 0.5)²) = -0.34021
    # hi = 1/6 + sqrt((0.90323 - 2/3)² + (0.5 - 0.15004)²) = 0.58908
    u = r["uplift"]
    assert u["treated"] == {"customers": 6, "converted": 4, "rate": pytest.approx(2 / 3)}
    assert u["holdout"] == {"customers": 4, "converted": 2, "rate": 0.5}
    assert u["difference"] == pytest.approx(1 / 6)
    assert u["ci95"] == pytest.approx([-0.34021, 0.58908], abs=5e-5)
    assert u["relative"] == pytest.approx(1 / 3)   # (1/6) / 0.5
    assert u["method"] == "newcombe_hybrid_score" and u["note"] is None

    # treated converted t1 (first 11 500, e02 at 12 000 ≤ 12 500: yes), t2 (first 11 600, e05 at 13 000: no),
    # t3 (first 12 200: nothing later), t4 (first 12 300, the till purchase at the same ts is not after it)
    # holdout converted h1 (first 11 300, e14 at 12 300 inclusive: yes), h2 (first 13 000: nothing later)
    assert r["repurchase"] == {"treated": {"customers": 4, "repurchased": 1, "rate": 0.25},
                               "holdout": {"customers": 2, "repurchased": 1, "rate": 0.5}}

    # s1: d01 d03 d08 d11 d13 d15 d18 (sent d01 d03 d18; d03 online, 30)
    # s2: d02 d04 d05 d09 d12 (sent d02 d04 d05; d05 store; anywhere d02 d04 d05 = 20 + 15 + 12)
    # s3: d06 d07 d10 d14 d19 (sent d06 d07 d19; nothing)
    assert r["by_store"] == [
        {"store_id": "s1", "decisions": 7, "sent": 3, "conversions": {"store": 0, "online": 1, "anywhere": 1},
         "revenue": 30.0},
        {"store_id": "s2", "decisions": 5, "sent": 3, "conversions": {"store": 1, "online": 0, "anywhere": 3},
         "revenue": 47.0},
        {"store_id": "s3", "decisions": 5, "sent": 3, "conversions": {"store": 0, "online": 0, "anywhere": 0},
         "revenue": 0.0},
    ]
    # no decision here has a campaign (older decisions): in no campaign's figures
    assert r["by_campaign"] == []

    # baskets (each purchase here is alone in its second; no quantity: one item each) in (x, x + 1 000] of
    # an exposure of the group. Treated: t1 e01 20 (d01, d02), e02 8 (12 000 = d01 + window, inclusive);
    # t2 e03 30 (e04 is before d03, e05 after its window); t3 e06 15; t4 e08 12 (e07 is a redemption);
    # t5 none (e09 before d06, e10 after); t6 e11 3 (e12 is a return). 6 baskets, 88 → 14.667.
    # Holdout: h1 e13 25 (e14 at 12 300 is after d08's window); h2 e15 10 (inclusive); h3 e16 after d10's window.
    assert r["upselling"] == {
        "treated": {"baskets": 6, "customers": 5, "value_per_basket": pytest.approx(88 / 6), "items_per_basket": 1.0},
        "holdout": {"baskets": 2, "customers": 2, "value_per_basket": 17.5, "items_per_basket": 1.0},
        "difference": {"value_per_basket": pytest.approx(88 / 6 - 17.5), "items_per_basket": 0.0}, "note": None}
    # no activity read, no survey, no support contact: null, and why
    assert r["retention"] is None and r["nps"] is None and r["responsiveness"] is None
    assert r["unavailable"] == {"retention": "no activity was read for this report",
                                "nps": "no survey in the period", "responsiveness": "no support contact in the period"}
    assert list(r) == ["period", "filters", "attribution_window_s", "empty", "empty_reason", "decisions",
                       "deliveries", "conversions", "funnel", "uplift", "repurchase", "by_store", "by_campaign",
                       "retention", "upselling", "nps", "responsiveness", "unavailable"]


def test_input_order_does_not_change_the_report():
    forward = report()
    backward = compute_kpis(list(D.values())[::-1], RECEIPTS[::-1], EVENTS[::-1], offer_items=OFFER_ITEMS,
                            period=PERIOD, window_s=WINDOW)
    assert backward == forward


def test_last_touch_tie_goes_to_the_greater_decision_id():
    ds = [decision("a", "c", "s1", 11_000, offer="o1"), decision("b", "c", "s2", 11_000, offer="o1")]
    r = compute_kpis(ds, [], [purchase("e", "c", "store", 11_100, "i1", 5.0, store="s2")],
                     offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)
    # "b" wins, and it was pushed at s2 where the purchase happened
    assert [s["conversions"] for s in r["by_store"]] == [{"store": 0, "online": 0, "anywhere": 0},
                                                         {"store": 1, "online": 0, "anywhere": 1}]


def test_a_redemption_of_another_offer_or_at_the_decision_instant_does_not_match():
    ds = [decision("a", "c", "s1", 11_000, offer="o1")]
    events = [redeem("e1", "c", "app", 11_100, "o2"), purchase("e2", "c", "web", 11_000, "i1", 5.0)]
    r = compute_kpis(ds, [], events, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)
    assert r["conversions"]["anywhere"] == {"conversions": 0, "rate": 0.0, "revenue": 0.0}


def test_newcombe_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873-890, example (a): 56/70 - 48/80, method 10
    lo, hi = newcombe_interval(56, 70, 48, 80)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    assert 56 / 70 - 48 / 80 == pytest.approx(0.2)


def test_wilson_published_example_and_extremes():
    # Newcombe (1998), Statistics in Medicine 17:857-872: 81/263, Wilson score interval 0.2553 to 0.3662;
    # by hand: centre (81 + 1.92073) / 266.84146 = 0.31075, half 1.96 sqrt(81·182/263 + 0.96037) / 266.84146 = 0.05546
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert Z95 == pytest.approx(1.96, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_period_boundaries_keep_from_and_exclude_to():
    ds = [decision("at-from", "c1", "s1", 10_000.0, offer="o1"), decision("at-to", "c2", "s1", 20_000.0, offer="o1"),
          decision("before", "c3", "s1", 9_999.999, offer="o1")]
    rs = [receipt(ds[0], "v1", "sent", 10_001), receipt(ds[1], "v2", "sent", 20_001)]
    r = compute_kpis(ds, rs, [], offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)
    assert r["decisions"]["total"] == 1 and r["decisions"]["sent"] == 1
    assert r["deliveries"]["total"] == 1 and r["deliveries"]["sent"] == 1


def test_store_filter():
    r = report(store_id="s1")
    assert r["filters"] == {"store_id": "s1", "offer_id": None, "campaign_id": None}
    # s1: d01 d03 d08 d11 d13 d15 d18; sent d01 d03 d18
    assert r["decisions"]["total"] == 7 and r["decisions"]["sent"] == 3
    assert r["decisions"]["suppressed_by_reason"]["holdout"] == 2
    assert r["decisions"]["suppressed_by_reason"]["quiet_hours"] == 1
    # deliveries v01 (opened), v03 (opened), v18 (queued → pending)
    assert r["deliveries"]["total"] == 3 and r["deliveries"]["opened"] == 2 and r["deliveries"]["pending"] == 1
    # d02 (s2) is not kept, so t1's s1 purchase e01 now goes to d01, pushed at s1: a store conversion
    assert r["conversions"]["store"] == {"conversions": 1, "rate": pytest.approx(1 / 3), "revenue": 20.0}
    assert r["conversions"]["online"] == {"conversions": 1, "rate": pytest.approx(1 / 3), "revenue": 30.0}
    assert r["conversions"]["anywhere"] == {"conversions": 2, "rate": pytest.approx(2 / 3), "revenue": 50.0}
    # treated t1 t2 t6, converted t1 t2; holdout h1 h4, converted h1
    assert r["uplift"]["treated"] == {"customers": 3, "converted": 2, "rate": pytest.approx(2 / 3)}
    assert r["uplift"]["holdout"] == {"customers": 2, "converted": 1, "rate": 0.5}
    assert [s["store_id"] for s in r["by_store"]] == ["s1"]


def test_offer_filter():
    r = report(offer_id="o2")
    # o2: d04 d05 d07 d18 (sent), d09 d11 (holdout); suppressions without an offer are not for this offer
    assert r["decisions"] == {"total": 6, "sent": 4, "suppressed": 2, "suppressed_by_reason": {
        **dict.fromkeys(REASONS, 0), "holdout": 2}}
    # d04 anywhere (15), d05 store (12) with its redemption
    assert r["conversions"]["anywhere"] == {"conversions": 2, "rate": 0.5, "revenue": 27.0}
    assert r["funnel"] == {"sent": 0, "opened": 0, "redeemed": 1, "purchased": 2}
    # treated t3 t4 t6 (converted t3 t4), holdout h2 h4 (converted h2)
    assert r["uplift"]["treated"]["customers"] == 3 and r["uplift"]["treated"]["converted"] == 2
    assert r["uplift"]["holdout"] == {"customers": 2, "converted": 1, "rate": 0.5}


def test_empty_period():
    r = compute_kpis(list(D.values()), RECEIPTS, EVENTS, offer_items=OFFER_ITEMS, period=(50_000.0, 60_000.0),
                     window_s=WINDOW)
    assert json.loads(json.dumps(r)) == r
    assert r["empty"] is True and r["empty_reason"] == "no decisions in the period"
    assert r["decisions"] == {"total": 0, "sent": 0, "suppressed": 0, "suppressed_by_reason": dict.fromkeys(REASONS, 0)}
    assert r["deliveries"] == {"total": 0, "sent": 0, "opened": 0, "open_rate": None, "failed": 0, "expired": 0,
                               "token_invalid": 0, "suppressed": 0, "suppressed_by_reason": {}, "pending": 0}
    assert r["conversions"] == {k: {"conversions": 0, "rate": None, "revenue": 0.0}
                                for k in ("store", "online", "anywhere")}
    assert r["funnel"] == {"sent": 0, "opened": 0, "redeemed": 0, "purchased": 0}
    assert r["uplift"] == {"treated": {"customers": 0, "converted": 0, "rate": None},
                           "holdout": {"customers": 0, "converted": 0, "rate": None},
                           "difference": None, "ci95": None, "relative": None, "method": "newcombe_hybrid_score",
                           "note": "no treated and no holdout customers in the period"}
    assert r["repurchase"] == {g: {"customers": 0, "repurchased": 0, "rate": None} for g in ("treated", "holdout")}
    assert r["by_store"] == [] and r["by_campaign"] == []
    # the over-read events fall in no exposure's window and the period has no survey nor contact
    assert r["retention"] is r["upselling"] is r["nps"] is r["responsiveness"] is None
    assert set(r["unavailable"]) == {"retention", "upselling", "nps", "responsiveness"}
    assert r["unavailable"]["upselling"] == "no purchase within the attribution window of any exposure in the period"


def test_empty_for_a_filter_says_so():
    assert report(store_id="s9")["empty_reason"] == "no decisions in the period for this store"
    assert report(offer_id="o9")["empty_reason"] == "no decisions in the period for this offer"
    assert report(store_id="s3", offer_id="o2")["empty_reason"] is None     # d07
    assert report(store_id="s2", offer_id="o9")["empty_reason"] == ("no decisions in the period for this store "
                                                                    "and this offer")


def test_no_holdout_customers():
    treated_only = [d for d in D.values() if d.reason != "holdout"]
    u = compute_kpis(treated_only, RECEIPTS, EVENTS, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)["uplift"]
    assert u["treated"] == {"customers": 6, "converted": 4, "rate": pytest.approx(2 / 3)}
    assert u["holdout"] == {"customers": 0, "converted": 0, "rate": None}
    assert u["difference"] is None and u["ci95"] is None and u["relative"] is None
    assert u["note"] == "no holdout customers in the period"


def test_holdout_with_no_conversion_has_no_relative_uplift():
    ds = [decision("a", "c1", "s1", 11_000, offer="o1"),
          decision("b", "c2", "s1", 11_000, offer="o1", reason="holdout")]
    u = compute_kpis(ds, [], [purchase("e", "c1", "web", 11_100, "i1")], offer_items=OFFER_ITEMS, period=PERIOD,
                     window_s=WINDOW)["uplift"]
    assert u["difference"] == 1.0 and u["relative"] is None
    assert u["ci95"] == list(newcombe_interval(1, 1, 0, 1))
    assert "relative uplift is undefined" in u["note"]


def test_zero_sends():
    holdout_only = [d for d in D.values() if d.outcome != "send"]
    r = compute_kpis(holdout_only, RECEIPTS, EVENTS, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)
    assert r["empty"] is False
    assert r["decisions"]["total"] == 8 and r["decisions"]["sent"] == 0
    assert r["deliveries"]["total"] == 0 and r["deliveries"]["open_rate"] is None and r["deliveries"]["pending"] == 0
    assert r["conversions"]["anywhere"] == {"conversions": 0, "rate": None, "revenue": 0.0}
    assert r["funnel"] == {"sent": 0, "opened": 0, "redeemed": 0, "purchased": 0}
    assert r["uplift"]["treated"] == {"customers": 0, "converted": 0, "rate": None}
    assert r["uplift"]["holdout"] == {"customers": 4, "converted": 2, "rate": 0.5}
    assert r["uplift"]["difference"] is None and r["uplift"]["note"] == "no treated customers in the period"
    assert r["repurchase"]["treated"] == {"customers": 0, "repurchased": 0, "rate": None}
    assert r["repurchase"]["holdout"] == {"customers": 2, "repurchased": 1, "rate": 0.5}


def test_conversion_event_from_interaction():
    i = InteractionV1(event_id="e1", customer_id="c1", channel="store", type="purchase", item_id="i1",
                      store_id="s1", quantity=2, value=19.5, currency="EUR", ts=11_000.0, received_at=11_001.0)
    assert ConversionEvent.from_interaction(i) == ConversionEvent("e1", "c1", "purchase", "store", 11_000.0,
                                                                  item_id="i1", store_id="s1", value=19.5,
                                                                  quantity=2.0)
    survey = InteractionV1(event_id="e2", customer_id="c1", channel="email", type="survey", score=8, ts=11_000.0,
                           received_at=11_001.0)
    assert ConversionEvent.from_interaction(survey).score == 8
    reply = InteractionV1(event_id="e3", customer_id="c1", channel="email", type="support_reply", reply_to="e0",
                          ts=11_000.0, received_at=11_001.0)
    assert ConversionEvent.from_interaction(reply).reply_to == "e0"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        report(period=(20_000.0, 10_000.0))
    with pytest.raises(ValueError):
        report(window_s=-1.0)
    with pytest.raises(ValueError):
        report(activity=(set(), set()))   # without `now`


# --- campaigns ------------------------------------------------------------------------------

def campaign(campaign_id, outcome, offer=None, reason=None):
    return CampaignOutcomeV1(campaign_id=campaign_id, revision=1, outcome=outcome, offer_id=offer, reason=reason)


def decided(decision_id, customer, store, decided_at, campaigns, *, offer=None, reason=None, by=None):
    """A decision over campaigns: `by` sent (or, with reason holdout, held out) `offer`."""
    d = decision(decision_id, customer, store, decided_at, offer=offer, reason=reason)
    return d.model_copy(update={"campaign_id": by, "campaigns": campaigns})


# cA (priority) and cB. k2: cA held a2 out, and cB, tried next, sent: a2 is in cA's holdout and cB's treated.
K = [decided("k1", "a1", "s1", 11_000, [campaign("cA", "sent", "o1")], offer="o1", by="cA"),
     decided("k2", "a2", "s1", 11_000, [campaign("cA", "held_out", "o1"), campaign("cB", "sent", "o2")],
             offer="o2", by="cB"),
     decided("k3", "a3", "s2", 12_000, [campaign("cA", "held_out", "o1"), campaign("cB", "suppressed", reason="outranked")],
             offer="o1", reason="holdout", by="cA"),
     decided("k4", "a4", "s2", 12_000, [campaign("cA", "suppressed", reason="not_in_audience"),
                                        campaign("cB", "sent", "o2")], offer="o2", by="cB"),
     decided("k5", "a5", "s1", 13_000, [campaign("cB", "held_out", "o2")], offer="o2", reason="holdout", by="cB"),
     decided("k6", "a6", "s1", 13_000, [], reason="quiet_hours")]      # no campaign: in no campaign's figures
K_RECEIPTS = [receipt(K[0], "w1", "sent", 11_001), receipt(K[0], "w1", "opened", 11_010),
              receipt(K[1], "w2", "sent", 11_001), receipt(K[3], "w4", "sent", 12_001)]
K_EVENTS = [purchase("f1", "a1", "store", 11_500, "i1", 10.0, store="s1"),   # o1 at k1's store: cA store
            purchase("f2", "a2", "web", 11_200, "i1", 8.0),                  # o1 online: cA's holdout converts
            purchase("f3", "a2", "store", 11_300, "i3", 5.0, store="s1"),    # o2 at k2's store: cB store
            purchase("f4", "a3", "web", 12_500, "i1", 7.0),                  # o1: cA's holdout a3 converts
            purchase("f5", "a5", "app", 13_500, "i3", 4.0)]                  # o2: cB's holdout a5 converts


def campaign_report(**kw):
    return compute_kpis(K, K_RECEIPTS, K_EVENTS, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW, **kw)


def test_one_campaign_against_its_own_holdout():
    a = campaign_report(campaign_id="cA")
    assert a["filters"] == {"store_id": None, "offer_id": None, "campaign_id": "cA"}
    # cA's decisions: k1 (sent by cA), k2 and k3 (held out by cA; k2 went out for cB, not cA)
    assert a["decisions"] == {"total": 3, "sent": 1, "suppressed": 2,
                              "suppressed_by_reason": {**dict.fromkeys(REASONS, 0), "holdout": 2}}
    # only cA's push w1 (w2 is cB's push on k2)
    assert (a["deliveries"]["total"], a["deliveries"]["sent"], a["deliveries"]["opened"]) == (1, 1, 1)
    assert a["conversions"] == {"store": {"conversions": 1, "rate": 1.0, "revenue": 10.0},
                                "online": {"conversions": 0, "rate": 0.0, "revenue": 0.0},
                                "anywhere": {"conversions": 1, "rate": 1.0, "revenue": 10.0}}
    assert a["funnel"] == {"sent": 1, "opened": 1, "redeemed": 0, "purchased": 1}
    # treated a1 1/1; holdout a2 (f2: o1's item, though cB pushed o2) and a3: 2/2
    u = a["uplift"]
    assert u["treated"] == {"customers": 1, "converted": 1, "rate": 1.0}
    assert u["holdout"] == {"customers": 2, "converted": 2, "rate": 1.0}
    assert u["difference"] == 0.0 and u["relative"] == 0.0 and u["ci95"] == list(newcombe_interval(1, 1, 2, 2))
    assert a["by_store"] == [
        {"store_id": "s1", "decisions": 2, "sent": 1, "conversions": {"store": 1, "online": 0, "anywhere": 1},
         "revenue": 10.0},
        {"store_id": "s2", "decisions": 1, "sent": 0, "conversions": {"store": 0, "online": 0, "anywhere": 0},
         "revenue": 0.0}]
    assert [c["campaign_id"] for c in a["by_campaign"]] == ["cA"]

    b = campaign_report(campaign_id="cB")
    # k2, k4 sent by cB, k5 held out; k3 (cB suppressed) is not cB's
    assert (b["decisions"]["total"], b["decisions"]["sent"], b["decisions"]["suppressed"]) == (3, 2, 1)
    assert b["deliveries"]["sent"] == 2   # w2, w4
    # k2 ← f3 (o2 at s1); f2 (i1) is not o2's
    assert b["conversions"]["store"] == {"conversions": 1, "rate": 0.5, "revenue": 5.0}
    assert b["uplift"]["treated"] == {"customers": 2, "converted": 1, "rate": 0.5}
    assert b["uplift"]["holdout"] == {"customers": 1, "converted": 1, "rate": 1.0}
    assert b["uplift"]["difference"] == -0.5 and b["uplift"]["ci95"] == list(newcombe_interval(1, 2, 1, 1))


def test_by_campaign_in_the_period_report():
    r = campaign_report()
    # the whole: sent k1 k2 k4; suppressed k3 k5 (holdout), k6 (quiet hours)
    assert (r["decisions"]["total"], r["decisions"]["sent"]) == (6, 3)
    # treated a1 (f1), a2 (f3 via k2's o2), a4 (nothing): 2/3; holdout a3 (f4), a5 (f5): 2/2
    assert r["uplift"]["treated"]["converted"] == 2 and r["uplift"]["holdout"]["converted"] == 2
    assert r["by_campaign"] == [
        {"campaign_id": "cA", "decisions": 3, "sent": 1, "held_out": 2,
         "conversions": {"store": 1, "online": 0, "anywhere": 1}, "revenue": 10.0,
         "uplift": {"treated": {"customers": 1, "converted": 1, "rate": 1.0},
                    "holdout": {"customers": 2, "converted": 2, "rate": 1.0},
                    "difference": 0.0, "ci95": list(newcombe_interval(1, 1, 2, 2)), "note": None}},
        {"campaign_id": "cB", "decisions": 3, "sent": 2, "held_out": 1,
         "conversions": {"store": 1, "online": 0, "anywhere": 1}, "revenue": 5.0,
         "uplift": {"treated": {"customers": 2, "converted": 1, "rate": 0.5},
                    "holdout": {"customers": 1, "converted": 1, "rate": 1.0},
                    "difference": -0.5, "ci95": list(newcombe_interval(1, 2, 1, 1)), "note": None}}]
    # the store filter holds inside each campaign: s2 has k3 (cA held out) and k4 (cB sent)
    s2 = campaign_report(store_id="s2")["by_campaign"]
    assert [(c["campaign_id"], c["decisions"], c["sent"], c["held_out"]) for c in s2] == [("cA", 1, 0, 1),
                                                                                           ("cB", 1, 1, 0)]
    assert s2[0]["uplift"]["note"] == "no treated customers for this campaign"


def test_a_campaigns_offer_is_its_own():
    # o1 as a whole: k1 (sent) and k3 (held out); k2 went out with o2
    assert campaign_report(offer_id="o1")["decisions"]["total"] == 2
    # o1 in cA: k2 too, where cA would have sent o1
    assert campaign_report(campaign_id="cA", offer_id="o1")["decisions"]["total"] == 3
    assert campaign_report(campaign_id="cA", offer_id="o2")["empty_reason"] == ("no decisions in the period for "
                                                                                "this offer and this campaign")


def test_an_unknown_campaign_is_empty_not_an_error():
    r = campaign_report(campaign_id="cZ")
    assert r["empty"] is True and r["empty_reason"] == "no decisions in the period for this campaign"
    assert r["by_campaign"] == [] and r["uplift"]["difference"] is None


# --- retention ------------------------------------------------------------------------------

def test_retention_of_the_active_customers_treated_against_holdout():
    # the next period is [20 000, 30 000). Interactions: z1, z2, t1 in the period; t1, h1, z1, z9 in the next.
    activity = ({"t1", "z1", "z2"}, {"t1", "h1", "z1", "z9"})
    r = report(activity=activity, now=30_000.0)
    # active in the period: z1 z2 and every customer of a kept decision's visit (t1-t6, h1-h4, x1) = 13.
    # again in the next: t1 h1 z1 z9, and t3 (d17 at 20 000, a visit of the next period). Retained: t1 h1 z1 t3.
    # treated t1-t6: t1 t3 = 2/6; holdout h1-h4: h1 = 1/4
    assert r["retention"] == {
        "active": {"customers": 13, "retained": 4, "rate": pytest.approx(4 / 13)},
        "treated": {"customers": 6, "retained": 2, "rate": pytest.approx(1 / 3)},
        "holdout": {"customers": 4, "retained": 1, "rate": 0.25},
        "difference": pytest.approx(1 / 12), "ci95": pytest.approx(list(newcombe_interval(2, 6, 1, 4))),
        "method": "newcombe_hybrid_score", "note": None}
    assert "retention" not in r["unavailable"]
    # under a store filter, the groups are s3's exposures (treated t5 t6 t3, holdout h3); "active" stays everyone
    s3 = report(store_id="s3", activity=activity, now=30_000.0)["retention"]
    assert s3["active"]["customers"] == 13
    assert s3["treated"] == {"customers": 3, "retained": 1, "rate": pytest.approx(1 / 3)}
    assert s3["holdout"] == {"customers": 1, "retained": 0, "rate": 0.0}


def test_retention_waits_for_the_next_period_to_end():
    r = report(activity=None, now=29_999.0)   # the caller does not read activity before the end either
    assert r["retention"] is None
    assert r["unavailable"]["retention"].startswith("the next period (as long as this one) ends at "
                                                    "1970-01-01T08:20:00Z, after now")
    nobody = compute_kpis([], [], [], offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW,
                          activity=(set(), set()), now=40_000.0)
    assert nobody["retention"] is None and nobody["unavailable"]["retention"] == "no customer was active in the period"


# --- upselling ------------------------------------------------------------------------------

def test_upselling_compares_baskets_after_a_push():
    ds = [decision("u1", "c1", "s1", 11_000, offer="o1"),
          decision("u4", "c1", "s2", 11_050, offer="o2"),        # overlaps u1's window: baskets count once
          decision("u3", "c3", "s1", 12_000, offer="o2"),
          decision("u2", "c2", "s1", 11_000, offer="o1", reason="holdout")]

    def line(event_id, customer, channel, ts, value, quantity):
        return ConversionEvent(event_id, customer, "purchase", channel, ts, item_id="i9", value=value,
                               quantity=quantity)

    events = [line("b1", "c1", "store", 11_100.2, 10.0, 2.0), line("b2", "c1", "store", 11_100.7, 5.0, None),
              line("b3", "c1", "web", 11_100.5, 4.0, 1.0),      # same second, other channel: its own basket
              line("b4", "c1", "store", 12_500, 20.0, 1.0),     # after both windows
              line("b5", "c3", "app", 13_000, None, 4.0),       # = u3 + window: in; no value counts 0
              line("b6", "c2", "store", 11_500, 6.0, 1.0), line("b7", "c2", "store", 11_501, 3.0, 2.0),
              line("b8", "c2", "store", 10_999, 50.0, 1.0)]     # before u2
    u = compute_kpis(ds, [], events, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)["upselling"]
    # treated: c1 {b1 b2} (15, 2 + 1 items), {b3} (4, 1); c3 {b5} (0, 4): 3 baskets, 19 / 3, 8 / 3 items
    # holdout: c2 {b6} (6, 1), {b7} (3, 2): 2 baskets, 4.5, 1.5 items
    assert u == {"treated": {"baskets": 3, "customers": 2, "value_per_basket": pytest.approx(19 / 3),
                             "items_per_basket": pytest.approx(8 / 3)},
                 "holdout": {"baskets": 2, "customers": 1, "value_per_basket": 4.5, "items_per_basket": 1.5},
                 "difference": {"value_per_basket": pytest.approx(19 / 3 - 4.5),
                                "items_per_basket": pytest.approx(8 / 3 - 1.5)},
                 "note": None}
    treated_only = compute_kpis(ds[:3], [], events, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)
    assert treated_only["upselling"]["holdout"] == {"baskets": 0, "customers": 0, "value_per_basket": None,
                                                    "items_per_basket": None}
    assert treated_only["upselling"]["difference"] == {"value_per_basket": None, "items_per_basket": None}
    assert treated_only["upselling"]["note"] == "no holdout basket in the period"


# --- NPS and the care channel ----------------------------------------------------------------

def survey(event_id, customer, channel, ts, score):
    return ConversionEvent(event_id, customer, "survey", channel, ts, score=score)


def test_nps_over_each_customers_latest_survey():
    events = [survey("n1", "c1", "app", 11_000, 10), survey("n2", "c1", "app", 12_000, 6),
              survey("n3", "c2", "email", 11_000, 9),
              survey("n5", "c3", "email", 12_000, 10), survey("n4", "c3", "store", 13_000, 7),
              survey("n6", "c4", "web", 9_000, 0),        # before the period
              survey("n7", "c5", "web", 20_000, 0),       # at its end: excluded
              survey("n8", "c6", "call_center", 14_000, 3), survey("n9", "c6", "call_center", 14_000, 9)]  # tie: n9
    r = compute_kpis([], [], events, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)
    # latest: c1 6 (detractor), c2 9 (promoter), c3 7 (store, passive), c6 9 (promoter): 100 (2 - 1) / 4 = 25
    # per channel: app c1 6 → -100; call_center c6 9 → 100; email c2 9, c3 10 → 100; store c3 7 → 0
    assert r["nps"] == {"n": 4, "promoters": 2, "passives": 1, "detractors": 1, "nps": 25.0, "by_channel": {
        "app": {"n": 1, "promoters": 0, "passives": 0, "detractors": 1, "nps": -100.0},
        "call_center": {"n": 1, "promoters": 1, "passives": 0, "detractors": 0, "nps": 100.0},
        "email": {"n": 2, "promoters": 2, "passives": 0, "detractors": 0, "nps": 100.0},
        "store": {"n": 1, "promoters": 0, "passives": 1, "detractors": 0, "nps": 0.0}}}
    assert "nps" not in r["unavailable"] and r["empty"] is True   # no decisions, still an NPS


def test_responsiveness_of_the_care_channel():
    def contact(event_id, customer, channel, ts):
        return ConversionEvent(event_id, customer, "support_contact", channel, ts)

    def reply(event_id, customer, to, ts, channel="email"):
        return ConversionEvent(event_id, customer, "support_reply", channel, ts, reply_to=to)

    events = [contact("s1", "c1", "call_center", 11_000), reply("r1", "c1", "s1", 14_600),
              reply("r1b", "c1", "s1", 18_200),                           # later answer: the first counts
              contact("s2", "c2", "email", 12_000), reply("r2", "c2", "s2", 12_000 + 90_000),   # 25 h
              contact("s3", "c3", "email", 13_000),                       # never answered
              contact("s4", "c4", "social", 14_000), reply("r4", "c4", "s4", 14_000 + 86_400),  # 24 h: in time
              contact("s5", "c5", "call_center", 15_000), reply("r5x", "c9", "s5", 15_100),  # another customer's
              reply("r5", "c5", "s5", 14_990),                            # 10 s before: clocks apart, at once
              contact("s6", "c6", "call_center", 9_000), reply("r6", "c6", "s6", 9_100)]    # before the period
    r = compute_kpis([], [], events, offer_items=OFFER_ITEMS, period=PERIOD, window_s=WINDOW)["responsiveness"]
    # answered s1 3 600, s2 90 000, s4 86 400, s5 0; sorted 0 3 600 86 400 90 000:
    # median (3 600 + 86 400) / 2 = 45 000, p90 the ceil(3.6) = 4th = 90 000
    assert r == {"contacts": 5, "answered": 4, "unanswered": 1, "within_24h": 3, "share_within_24h": 0.6,
                 "median_s": 45_000.0, "p90_s": 90_000.0, "by_channel": {
                     "call_center": {"contacts": 2, "answered": 2, "unanswered": 0, "within_24h": 2,
                                     "share_within_24h": 1.0, "median_s": 1_800.0, "p90_s": 3_600.0},
                     "email": {"contacts": 2, "answered": 1, "unanswered": 1, "within_24h": 0,
                               "share_within_24h": 0.0, "median_s": 90_000.0, "p90_s": 90_000.0},
                     "social": {"contacts": 1, "answered": 1, "unanswered": 0, "within_24h": 1,
                                "share_within_24h": 1.0, "median_s": 86_400.0, "p90_s": 86_400.0}}}
