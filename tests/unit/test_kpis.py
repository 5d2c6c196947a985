"""The KPI report: every figure of a small hand-built history (expected values derived by hand,
in the comments), Newcombe's published interval examples, period boundaries, filters, and the
reports with nothing to divide by."""
from __future__ import annotations

import json

import pytest

from vicino.services.kernel.contracts.decisions import REASONS, DecisionV1
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
    assert r["filters"] == {"store_id": None, "offer_id": None}
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
    assert list(r) == ["period", "filters", "attribution_window_s", "empty", "empty_reason", "decisions",
                       "deliveries", "conversions", "funnel", "uplift", "repurchase", "by_store"]


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
    assert r["filters"] == {"store_id": "s1", "offer_id": None}
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
    assert r["by_store"] == []


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
                                                                  item_id="i1", store_id="s1", value=19.5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        report(period=(20_000.0, 10_000.0))
    with pytest.raises(ValueError):
        report(window_s=-1.0)
